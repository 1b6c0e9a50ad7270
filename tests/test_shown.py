"""What pages show (issue 9): commands safe to paste into a shell, and no link or
source that leaves the origin, whatever the pipe's name or the request's path.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hoodypipe.shown import pipe_path, shell_command, shown_url
from tests.memhttp import MemoryDaemon

INJECTION = "x';echo$IFS'INJECTED';'"
# Names that mean something to a shell, raw in the request target as a client may send them.
HOSTILE_NAMES = [
    INJECTION,
    'x";echo${IFS}INJECTED;"',
    "x$(echo${IFS}INJECTED)",
    "x`echo${IFS}INJECTED`",
    "x|echo${IFS}INJECTED",
    "x&echo${IFS}INJECTED&",
    "x>INJECTED",
    "x*",
    "[a]",
    "~root",
    "x!echo",
    "x{a,b}",
    "%27;echo%20INJECTED",
]
BASH = shutil.which("bash")


def dashboard(d: MemoryDaemon, target: str, host: str = "pipe.test") -> str:
    raw = f"GET {target} HTTP/1.1\r\nHost: {host}\r\nAccept: text/html\r\n\r\n".encode("latin-1")
    response = d.connect().send(raw).response()
    assert response.status == 200, response
    return response.body.decode()


def shown_commands(page: str) -> list[str]:
    """Every command line a page shows to copy: <pre> lines and <code> starting with curl."""
    blocks = re.findall(r"<pre>(.*?)</pre>", page, re.S) + re.findall(r"<code>(curl .*?)</code>", page, re.S)
    lines = [html.unescape(line) for block in blocks for line in block.splitlines()]
    return [line for line in lines if line.startswith("curl ")]


def run_as_printf(line: str) -> list[str]:
    """What bash passes to curl for a pasted line: printf prints one argument a line."""
    command = "printf '%s\\n'" + line[len("curl") :]
    done = subprocess.run([BASH, "-c", command], capture_output=True, timeout=10, check=False)
    assert done.returncode == 0 and done.stderr == b"", (line, done)
    return done.stdout.decode("utf-8", "surrogateescape").split("\n")[:-1]


@pytest.mark.skipif(BASH is None, reason="no bash to paste into")
@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_the_dashboards_commands_are_safe_to_paste_into_bash(name, tmp_path):
    d = MemoryDaemon()
    page = dashboard(d, f"/api/v1/pipe/{name}?progress")
    commands = shown_commands(page)
    assert len(commands) >= 3, commands  # the noscript one, SSE and the snapshot
    url = "http://pipe.test" + pipe_path(name)
    for line in commands:
        args = run_as_printf(line)
        assert args[-1] in (url + "?progress", url + "?status"), (line, args)
        assert "INJECTED" not in args[:-1] and all("INJECTED" not in a or a == args[-1] for a in args), args
    assert not (tmp_path / "INJECTED").exists()


@pytest.mark.skipif(BASH is None, reason="no bash to paste into")
def test_the_injection_of_the_review_prints_the_url_as_one_argument():
    page = dashboard(MemoryDaemon(), f"/api/v1/pipe/{INJECTION}?progress")
    (sse,) = [line for line in shown_commands(page) if "event-stream" in line][:1]
    assert run_as_printf(sse) == [
        "-N",
        "-H",
        "Accept: text/event-stream",
        f"http://pipe.test/api/v1/pipe/{INJECTION}?progress",
    ]


@pytest.mark.skipif(BASH is None, reason="no bash to paste into")
@pytest.mark.parametrize("host", ["pipe.example:8080", "[::1]:8080", "127.0.0.1"])
def test_the_help_pages_commands_are_safe_to_paste_into_bash(host):
    d = MemoryDaemon()
    body = d.connect().send(f"GET /help HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()).response().body.decode()
    lines = [line.strip() for line in body.splitlines() if line.strip().startswith("curl ")]
    assert len(lines) >= 8, body
    for line in lines:
        command = line.split("  #")[0].split(" > ")[0].split(" | ")[0].split("   (")[0]
        args = run_as_printf(command)
        urls = [a for a in args if a.startswith("http")]
        assert len(urls) == 1 and urls[0].startswith(f"http://{host}/api/v1/pipe/"), (line, args)
    assert "&#39;" not in body and "&amp;" not in body  # plain text, not HTML-escaped


# -- no link or source leaves the origin -----------------------------------------------------------

OFF_SITE_TARGETS = [
    "//evil.example/x?progress",
    "///evil.example/x?progress",
    "/api/v1/pipe//evil.example/x?progress",
    "/api/v1/pipe///evil.example?progress",
    "/%2F%2Fevil.example?progress",
    "//evil.example?progress",
    "/\\evil.example?progress",
]
URL_ATTRIBUTE = re.compile(r"""\b(?:href|src|action|formaction|poster|data-[\w-]+)\s*=\s*(["'])(.*?)\1""", re.S)
REFRESH = re.compile(r"""http-equiv=["']refresh["'][^>]*content=["'][^"']*url=([^"']+)""", re.I)
SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:\S*\Z")


def same_origin(url: str) -> bool:
    """A page-relative URL: one "/" then anything but "/" or "\\" (or a data: URI)."""
    return url.startswith("data:") or re.match(r"/(?![/\\])", url) is not None


def links(page: str) -> list[str]:
    """Every value on the page a browser would follow or load: URL attributes (a value with a
    scheme or a leading slash), a refresh's url, and the dashboard's configured URLs."""
    found = [html.unescape(value).strip() for _, value in URL_ATTRIBUTE.findall(page)]
    found = [u for u in found if u.startswith(("/", "\\")) or SCHEME.match(u)]
    found += [html.unescape(u) for u in REFRESH.findall(page)]
    for block in re.findall(r'<script type="application/json" id="config"[^>]*>(.*?)</script>', page, re.S):
        config = json.loads(block)
        found += [config[k] for k in ("sseUrl", "statusUrl") if k in config]
    return found


@pytest.mark.parametrize("target", OFF_SITE_TARGETS)
def test_no_dashboard_link_leaves_the_origin(target):
    d = MemoryDaemon()
    raw = f"GET {target} HTTP/1.1\r\nHost: pipe.test\r\nAccept: text/html\r\n\r\n".encode()
    response = d.connect().send(raw).response()
    if response.status != 200:
        assert response.body.startswith(b"[ERROR] ")  # refused as a name: no page at all
        return
    found = links(response.body.decode())
    assert found, response.body[:300]
    for url in found:
        assert same_origin(url), (target, url)


@pytest.mark.parametrize("target", ["/", "/api/v1/pipe", "/api/v1/pipe/", "/noscript", "/api/v1/pipe/noscript"])
@pytest.mark.parametrize("host", ["pipe.test", "evil.example", "evil.example:1"])
def test_no_page_link_leaves_the_origin(target, host):
    d = MemoryDaemon()
    response = d.connect().send(f"GET {target} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()).response()
    assert response.status == 200
    found = links(response.body.decode())
    assert found, response.body[:300]  # every page links somewhere (home, help)
    for url in found:
        assert same_origin(url), (target, url)


def test_the_dashboard_links_to_the_name_it_shows():
    d = MemoryDaemon()
    page = dashboard(d, "//evil.example/x?progress")
    config = json.loads(page.split('id="config"', 1)[1].split(">", 1)[1].split("</script>", 1)[0])
    assert config["statusUrl"] == "/api/v1/pipe//evil.example/x?status"
    assert config["sseUrl"] == "/api/v1/pipe//evil.example/x?progress&follow=1&format=sse"
    assert config["pipeUrl"] == "http://pipe.test/api/v1/pipe//evil.example/x"


# -- the helpers -------------------------------------------------------------------------------------


@given(st.text(min_size=1, max_size=30))
def test_pipe_path_is_always_on_this_origin(name):
    path = pipe_path(name)
    assert path.startswith("/api/v1/pipe/") and same_origin(path)
    assert re.fullmatch(r"[\x21-\x7e]+", path), path  # nothing a URL may not carry raw
    assert not re.search(r"[\"<>`{}#?\s]", path), path


@pytest.mark.parametrize(
    "name, path",
    [
        ("mypipe", "/api/v1/pipe/mypipe"),
        ("a/b", "/api/v1/pipe/a/b"),
        ("caf%C3%A9", "/api/v1/pipe/caf%C3%A9"),  # escapes stay: the same name
        (INJECTION, f"/api/v1/pipe/{INJECTION}"),  # shell characters are the shell quoting's job
        ('a"b<c>d`e{f}g#h', "/api/v1/pipe/a%22b%3Cc%3Ed%60e%7Bf%7Dg%23h"),
        ("a b", "/api/v1/pipe/a%20b"),
        ("\x80", "/api/v1/pipe/%80"),
    ],
)
def test_pipe_path_percent_encodes_what_a_browser_would(name, path):
    assert pipe_path(name) == path


@pytest.mark.skipif(BASH is None, reason="no bash to paste into")
@given(
    st.lists(
        st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00\n"), max_size=12),
        min_size=1,
        max_size=4,
    )
)
def test_shell_command_round_trips_through_bash(args):
    assert run_as_printf("curl " + shell_command(*args)) == args


def test_shown_url():
    assert shown_url("http://h:1", "x", "progress") == "http://h:1/api/v1/pipe/x?progress"
    assert shown_url("http://h:1", "x") == "http://h:1/api/v1/pipe/x"
