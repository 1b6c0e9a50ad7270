"""Every private name of Twisted that channel.py relies on still exists.

A Twisted upgrade that renames one fails here, naming it, instead of as a
confusing failure deep in a transfer.
"""

from __future__ import annotations

import importlib

import pytest
from twisted.internet import abstract
from twisted.internet.testing import StringTransport
from twisted.web import http

from hoodypipe.channel import TWISTED_PRIVATES

CASES = [(where, name) for where, names in TWISTED_PRIVATES.items() for name in names]


def _channel_mid_request() -> http.HTTPChannel:
    """A channel whose request line and headers are in, its body not yet."""
    channel = http.HTTPChannel()
    channel.makeConnection(StringTransport())
    channel.dataReceived(b"PUT /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n")
    return channel


def _holder(where: str) -> object:
    if where == "twisted.web.http.HTTPChannel instance":
        return _channel_mid_request()
    if where in ("twisted.web.http.HTTPChannel", "twisted.protocols.basic.LineReceiver"):
        return _channel_mid_request()
    if where == "twisted.internet.abstract.FileDescriptor":
        descriptor = abstract.FileDescriptor()
        descriptor.write(b"x")  # the buffers exist once something waits to be sent
        return descriptor
    return importlib.import_module(where)


@pytest.mark.parametrize(("where", "name"), CASES, ids=[f"{w}.{n}" for w, n in CASES])
def test_the_private_name_exists(where, name):
    holder = _holder(where)
    assert hasattr(holder, name), f"Twisted moved {where}.{name}: hoodypipe.channel relies on it"


def test_the_request_line_is_what_the_channel_read():
    channel = _channel_mid_request()
    assert (channel._command, channel._path, channel._version) == (b"PUT", b"/x", b"HTTP/1.1")


def test_no_other_module_touches_twisteds_privates():
    import pathlib
    import re

    names = {name for names in TWISTED_PRIVATES.values() for name in names}
    # Another object's private attribute (a module's own ``self._x`` is its business).
    pattern = re.compile(r"(?<!\bself)\.(" + "|".join(map(re.escape, sorted(names))) + r")\b")
    package = pathlib.Path(__file__).resolve().parents[1] / "hoodypipe"
    offenders = [
        f"{path.name}: {match.group(1)}"
        for path in sorted(package.glob("*.py"))
        if path.name != "channel.py"
        for match in pattern.finditer(path.read_text())
    ]
    private_import = re.compile(r"from twisted[\w.]* import [^\n]*\b_[A-Za-z]\w*")
    offenders += [
        f"{path.name}: {match.group(0)}"
        for path in sorted(package.glob("*.py"))
        if path.name != "channel.py"
        for match in private_import.finditer(path.read_text())
    ]
    assert offenders == []
