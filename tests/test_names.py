"""Target classification: reserved pages, names, flags."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hoodypipe.errors import HTTPError
from hoodypipe.names import Query, parse_target


@pytest.mark.parametrize(
    "uri, page",
    [
        (b"/", "start"),
        (b"/api/v1/pipe", "start"),
        (b"/api/v1/pipe/", "start"),
        (b"/help", "help"),
        (b"/Help", "help"),
        (b"/help/", "help"),
        (b"/help.", "help"),
        (b"/help%2e", "help"),
        (b"/HELP%2E", "help"),
        (b"/noscript", "noscript"),
        (b"/favicon.ico", "favicon.ico"),
        (b"/robots.txt", "robots.txt"),
        (b"/api/v1/pipe/health", "health"),
        (b"/api/v1/pipe/Health/", "health"),
        (b"/api/v1/pipe/metrics", "metrics"),
        (b"/api/v1/pipe/help?x=1", "help"),
    ],
)
def test_reserved_pages(uri, page):
    assert parse_target(uri).page == page


@pytest.mark.parametrize("word", ["health", "metrics", "Health/", "metrics."])
def test_health_and_metrics_at_the_root_are_404_with_a_hint(word):
    with pytest.raises(HTTPError) as caught:
        parse_target(b"/" + word.encode())
    assert caught.value.code == 404
    plain = word.lower().rstrip("/.")
    assert caught.value.message == f"'/{plain}' is not a valid path. Use '/api/v1/pipe/{plain}'."


def test_prefix_is_stripped_once_and_both_forms_are_one_name():
    assert parse_target(b"/api/v1/pipe/x").name == parse_target(b"/x").name == "x"
    assert parse_target(b"/api/v1/pipe/api/v1/pipe/x").name == "api/v1/pipe/x"
    assert parse_target(b"/api/v1/pipeline").name == "api/v1/pipeline"


def test_names_keep_slashes_and_fold_hex_case():
    assert parse_target(b"/team/backup-01").name == "team/backup-01"
    assert parse_target(b"/caf%c3%a9").name == parse_target(b"/caf%C3%A9").name == "caf%C3%A9"
    assert parse_target(b"/a?n=2").name == parse_target(b"/a?n=3").name


@pytest.mark.parametrize("raw", [b"/a%2Fb", b"/a%2fb", b"/a%5Cb", b"/a\\b", b"/a%00b", b"/a%0Ab", b"/a\x01b", b"/a%7f"])
def test_forbidden_names_are_400(raw):
    with pytest.raises(HTTPError) as caught:
        parse_target(raw)
    assert caught.value.code == 400


def test_name_length_limit_counts_raw_characters():
    assert parse_target(b"/" + b"a" * 1024).name == "a" * 1024
    with pytest.raises(HTTPError) as caught:
        parse_target(b"/" + b"a" * 1025)
    assert caught.value.code == 414
    assert caught.value.message == "Path too long (max 1024 characters)."
    with pytest.raises(HTTPError):
        parse_target(b"/" + b"%41" * 342)  # 1026 raw characters, 342 decoded


@pytest.mark.parametrize(
    "query, expected",
    [
        (b"progress", True),
        (b"progress=", True),
        (b"progress=true", True),
        (b"progress=YES", True),
        (b"progress=1", True),
        (b"progress=false", False),
        (b"progress=no", False),
        (b"progress=0", False),
        (b"other", False),
    ],
)
def test_boolean_flags(query, expected):
    assert Query.parse(query).flag("progress") is expected


def test_bad_flag_value_is_400():
    with pytest.raises(HTTPError) as caught:
        Query.parse(b"progress=maybe").flag("progress")
    assert caught.value.code == 400


@pytest.mark.parametrize("value", [b"0", b"257", b"abc", b"-1", b"1.5", b"", b"99999999999"])
def test_n_out_of_range(value):
    with pytest.raises(HTTPError) as caught:
        Query.parse(b"n=" + value).integer("n", 1, 256, 1)
    assert caught.value.code == 400


@given(st.binary(max_size=2000))
def test_any_target_is_classified_or_refused_cleanly(raw):
    try:
        target = parse_target(b"/" + raw)
    except HTTPError as error:
        assert error.code in (400, 404, 414)
        assert error.line.startswith(b"[ERROR] ") and error.line.count(b"\n") == 1
    else:
        assert (target.page is None) != (target.name is None)
        if target.name is not None:
            assert 1 <= len(target.name) <= 1024
            assert "%2F" not in target.name.upper() and "\\" not in target.name
