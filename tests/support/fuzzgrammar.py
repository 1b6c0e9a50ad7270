"""The fuzz grammar: what the fuzzers send, and what every answer must look like.

One copy for both fuzzers: tests/e2e/test_fuzz.py builds hypothesis strategies from these
vocabularies, bench/fuzz.py mutates valid requests with them, and both judge every answer
with ``answer_problems`` (``read_answers`` for a whole exchange, pipelined answers included).
Standard library only.
"""

from __future__ import annotations

import re

from .httpwire import BadMessage, BodyDecoder, Response, parse_fields, parse_status_line, status_code

PREFIX = b"/api/v1/pipe/"
ERROR_BODY = re.compile(rb"\A\[ERROR\] [^\r\n]*\.\n\Z")
# Every header name the daemon (twisted.web, Klein, hoodypipe) may send.
KNOWN_HEADERS = {
    "access-control-allow-headers", "access-control-allow-methods", "access-control-allow-origin",
    "access-control-expose-headers", "access-control-max-age", "allow", "cache-control", "connection",
    "content-disposition", "content-length", "content-security-policy", "content-type", "date",
    "referrer-policy", "retry-after", "server", "transfer-encoding", "vary", "x-accel-buffering",
    "x-content-type-options", "x-hoody-pipe", "x-hoody-pipe-transfer-id", "x-piping", "x-robots-tag",
}  # fmt: skip

# -- what is sent -----------------------------------------------------------------------------------

# Percent escapes, including the forbidden ones (%2F, %5C, %00-%1F, %7F) and odd hex case.
ESCAPES = [b"%2F", b"%2f", b"%5C", b"%5c", b"%00", b"%0A", b"%0d", b"%1F", b"%7F", b"%20",
           b"%41", b"%e2%82%ac", b"%FF", b"%", b"%G1", b"%2", b"%2E", b"%2e%2E", b"%25"]  # fmt: skip
# Path segments with a meaning somewhere.
SEGMENTS = [b"/", b"//", b".", b"..", b"\\", b"help", b"health", b"metrics", b"api", b"v1"]
# Bytes that separate or end things, inserted anywhere.
SPECIALS = [b"\r", b"\n", b"\r\n", b"\x00", b" ", b"\t", b":", b"%", b"\xff", b"\r\n\r\n", b"?", b"/", b";",
            b"\\", b"%00", b"%2F", b"\x7f", b"\x80"]  # fmt: skip
# Pieces of header values: scriptable types, dispositions, quoting, controls, injections.
HEADER_VALUES = [b"text/html", b"image/svg+xml", b"text/plain; charset=utf-8", b"application/xhtml+xml",
                 b"inline", b"attachment", b"; filename=", b'"', b"\\", b"\t", b" ", b";", b"=", b"*",
                 b"UTF-8''%E2%82%AC", b"../../etc/passwd", b"\x7f", b"\x01", b"\x1b[31m", b"\xe9",
                 b"\r\n Injected: yes", b"\r\n\tInjected: yes", b"\r\nInjected: yes", b"\x00", b"\n",
                 b"\r", b"text/x-javascript", b"application/x-ecmascript", b"text/jscript", b"text/livescript",
                 b"text/javascript1.5", b"\x85", b"\x9b", b"\xc2\x85", b"\xe2\x80\xae", b"\xe2\x81\xa6",
                 b"%E2%80%AE", b"%C2%85"]  # fmt: skip
# WHATWG MIME Sniffing, "JavaScript MIME type": no receiver may be served one of these.
JAVASCRIPT_TYPES = [
    "application/ecmascript", "application/javascript", "application/x-ecmascript", "application/x-javascript",
    "text/ecmascript", "text/javascript", "text/javascript1.0", "text/javascript1.1", "text/javascript1.2",
    "text/javascript1.3", "text/javascript1.4", "text/javascript1.5", "text/jscript", "text/livescript",
    "text/x-ecmascript", "text/x-javascript",
]  # fmt: skip
# C1 controls and bidirectional controls: never in a receiver's file name or passed-through header.
INVISIBLE = [chr(c) for c in range(0x80, 0xA0)] + list("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e"
                                                      "\u2066\u2067\u2068\u2069")  # fmt: skip
HOSTS = [b"a" * 63 + b".example", b"a" * 64 + b".example", b"a..b", b".", b"..", b"[::1]:80", b"[::1",
         b"example.com:99999", b"caf\xc3\xa9.example", b"caf\xe9.example", b"xn--caf-dma.example",
         b"xn--zz", b"-", b"host:port", b"", b"a" * 300]  # fmt: skip
HOST_PIECES = [b"a", b"b" * 70, b".", b"-", b":", b"\xff", b"1"]
# Chunked bodies broken in their framing.
BAD_CHUNKED_BODIES = [b"zz\r\n", b"5\r\nhello\r\nx\r\n", b"-1\r\n", b"5\rhello\r\n0\r\n\r\n",
                      b"ffffffffffffffffff\r\n"]  # fmt: skip
BAD_CHUNK_SIZES = [b"-1", b"ffffffffffffffffff", b"0x10", b" 5", b"5 ", b"5;a\nb", b"5;a b", b"5;", b"g", b"",
                   b"1" * 30, b"+5", b"5\t", b"0000000000000000000001", b"FFFFFFFF", b"7fffffffffffffff",
                   b"\x00"]  # fmt: skip
BAD_LENGTHS = [b"-1", b"1e3", b" 5", b"5, 5", b"99999999999999999999", b"+5", b"0x10", b"", b"5 6", b"\xff"]
BAD_TE = [b"chunked, chunked", b"gzip, chunked", b"Chunked", b"identity", b"chunked;q=1", b"chunkedx", b"",
          b" chunked", b"\tchunked"]  # fmt: skip
METHODS = [b"get", b"Get", b"put", b"post", b"options",
           b"PUT ", b"DELETE", b"PATCH", b"CONNECT", b"TRACE", b"PRI", b"G\x00T", b"", b"POST\x01",
           b"X" * 300, b"M-SEARCH", b"PROPFIND"]  # fmt: skip
VERSIONS = [b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.1x", b"", b"HTTP/0.9", b"http/1.1", b"HTTP/1.11", b"HTTP/1"]
# Strict HTTP (issue 9, docs/security.md): head lines that frame a request two ways, each refused
# with 400 and one [ERROR] line before anything acts on it, whatever else the request says.
STRICT_HEADS = [
    [b"Transfer-Encoding: chunked", b"Transfer-Encoding: identity"],
    [b"Transfer-Encoding: identity", b"Transfer-Encoding: chunked"],
    [b"Transfer-Encoding: identity"],
    [b"Transfer-Encoding: identity", b"Content-Length: 5"],
    [b"Content-Length: 5", b"Transfer-Encoding: identity"],
    [b"Transfer-Encoding: chunked", b"Content-Length: 5"],
    [b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked"],
    [b"Transfer-Encoding: gzip, chunked"],
    [b"Host: second.example"],
]
# Chunked bodies outside RFC 9112 section 7.1 that looser parsers accept: the upload fails.
STRICT_CHUNKED_BODIES = [b"5 \r\nhello\r\n0\r\n\r\n", b"5\t\r\nhello\r\n0\r\n\r\n", b"5;a\nb\r\nhello\r\n0\r\n\r\n",
                         b"5;a\rb\r\nhello\r\n0\r\n\r\n", b"5;\r\nhello\r\n0\r\n\r\n", b'5;a="b\r\nhello\r\n0\r\n\r\n',
                         b"5\r\nhello\r\n0\r\nGET /api/v1/pipe/victim HTTP/1.1\r\nHost: x\r\n\r\n",
                         b"5\r\nhello\r\n0\r\nX-T 1\r\n\r\n",
                         b"5\r\nhello\r\n0\r\nX-T: 1\r\n folded\r\n\r\n"]  # fmt: skip
# Heads over twisted.web's limits: (head lines after the request line, status).
OVERSIZED_HEADS = [
    ([b"X-Big: " + b"x" * 17000], 431),
    ([b"X-F-%d: v" % i for i in range(501)], 431),
    ([b"X-F-%d: %s" % (i, b"v" * 1000) for i in range(17)], 431),
]
# Query keys and values the daemon reads, and others.
QUERY_KEYS = ["n", "wait", "status", "download", "filename", "format", "x", "", "n n", "%6E"]
QUERY_VALUES = ["", "1", "0", "3", "256", "257", "-1", "01", "1e3", "true", "false", "yes", "no", "maybe",
                "%31", "+1", " 1", "99999999999", "\u00e9", "%00", "a%0Ab"]  # fmt: skip

# -- what must come back ------------------------------------------------------------------------


def answer_problems(answer: Response, has_body: bool = True, shutting_down: bool = False) -> list[tuple[str, str]]:
    """``(kind, detail)`` for each way ``answer`` breaks the contract: HTTP/1.x, only header
    names the daemon sends (none from the input), no 5xx (but 503 while shutting down), and an
    error body (when it came whole) of exactly one ``[ERROR] ... .`` line as text/plain. The
    header lines themselves were checked when they were parsed (no control character)."""
    problems = []
    head = repr(answer.head[:300])
    if answer.version not in ("1.0", "1.1"):
        problems.append(("not HTTP/1.x", head))
    for name, _ in answer.headers:
        if name.lower() not in KNOWN_HEADERS:
            problems.append(("unknown response header", f"{name!r} in {head}"))
    if answer.status >= 500 and not (answer.status == 503 and shutting_down):
        problems.append((f"HTTP {answer.status}", head))
    if has_body and answer.status >= 400 and answer.complete:
        if not (answer.header("content-type") or "").startswith("text/plain"):
            problems.append(("error not text/plain", repr((answer.head[:120], answer.body[:120]))))
        elif not ERROR_BODY.match(answer.body):
            problems.append(("error body not one [ERROR] line", repr(answer.body[:200])))
    return problems


def read_answers(
    data: bytes, closed: bool, head_first: bool = False, shutting_down: bool = False
) -> tuple[list[Response], list[tuple[str, str]]]:
    """Every answer in ``data`` (what one connection got; ``closed``: it ended with a close),
    1xx ones included, and the problems: ``answer_problems`` of each, anything that is not
    HTTP, and anything after an answer that said ``Connection: close``. ``head_first``: the
    first request was a HEAD, so its final answer has no body (unless a body follows it)."""
    answers: list[Response] = []
    problems: list[tuple[str, str]] = []
    rest = data
    finals = 0
    while rest:
        if answers and (answers[-1].header("connection") or "").lower() == "close":
            problems.append(("a second answer after Connection: close", f"then {rest[:160]!r}; all: {data[:500]!r}"))
            break
        end = rest.find(b"\r\n\r\n")
        if end < 0:  # a head still arriving, or not HTTP
            try:
                status_code(rest.split(b"\r\n", 1)[0][:13])
            except BadMessage:
                problems.append(("not HTTP", repr(rest[:160])))
            break
        first, *lines = rest[:end].split(b"\r\n")
        try:
            version, status, reason = parse_status_line(first)
        except BadMessage:
            problems.append(("not HTTP", repr(first[:160])))
            break
        try:
            headers = parse_fields(lines)
        except BadMessage as error:
            problems.append(("bad response header line", str(error)))
            break
        answer = Response(status, headers, reason=reason, version=version, head=rest[:end])
        answers.append(answer)
        rest = rest[end + 4 :]
        interim = 100 <= status < 200
        finals += not interim
        # The answer to a HEAD has no body, unless the request was too broken to be read as one.
        bodiless = head_first and finals == 1 and (not rest or rest.startswith(b"HTTP/1."))
        try:
            body = BodyDecoder.for_response(answer, "HEAD" if bodiless else "GET")
            answer.body = b"".join(body.feed(rest))
        except BadMessage as error:
            problems.append(("bad body framing", f"{error} in {data[:300]!r}"))
            break
        if closed:
            body.eof()
        answer.complete = body.done
        problems += answer_problems(answer, has_body=not (interim or bodiless), shutting_down=shutting_down)
        if not body.done:
            break
        rest = body.rest
    return answers, problems
