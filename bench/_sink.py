#!/usr/bin/env python3
"""A discarding HTTP/1.1 server: the "limit" target of throughput.py.

Usage: _sink.py PORT_FILE

Listens on a port of 127.0.0.1 that the kernel chooses, and writes that port to
PORT_FILE (whole, then renamed into place) once listening. For each request:
answer `100 Continue` if asked, read and discard the body (chunked or
Content-Length, undone by tests/support/httpwire.py), then answer `200 OK` with
an empty body and close. A GET without body gets a 200 at once (the readiness
check).
"""

import os
import socket
import sys
import threading

import _common  # noqa: F401 (puts the repository root on sys.path)

from tests.support.httpwire import BadMessage, BodyDecoder, parse_request_head

RECV = 1 << 20


class BadRequest(Exception):
    pass


def read_head(conn):
    """Return (request, bytes already read past its head)."""
    data = b""
    while b"\r\n\r\n" not in data:
        more = conn.recv(65536)
        if not more:
            raise BadRequest("connection closed in headers")
        data += more
    head, _, rest = data.partition(b"\r\n\r\n")
    return parse_request_head(head), rest


def discard(conn, decoder, rest):
    """Read the body to its end, keeping none of it."""
    decoder.feed(rest)
    buf = bytearray(RECV)
    while not decoder.done:
        n = conn.recv_into(buf, RECV)
        if not n:
            raise BadRequest("connection closed in the body")
        decoder.feed(buf, n)


def handle(conn):
    with conn:
        try:
            request, rest = read_head(conn)
            if (request.headers.get("Expect") or "").lower() == "100-continue":
                conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            discard(conn, BodyDecoder.for_request(request.headers), rest)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        except (BadRequest, BadMessage, OSError) as e:
            print("sink: %s" % e, file=sys.stderr, flush=True)


def main():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    port_file = sys.argv[1]
    with open(port_file + ".tmp", "w") as f:
        f.write("127.0.0.1 %d\n" % srv.getsockname()[1])
    os.replace(port_file + ".tmp", port_file)
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    main()
