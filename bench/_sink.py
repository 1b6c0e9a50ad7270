#!/usr/bin/env python3
"""A discarding HTTP/1.1 server: the "limit" target of throughput.py.

Usage: _sink.py PORT

For each request: answer `100 Continue` if asked, read and discard the body
(chunked or Content-Length), then answer `200 OK` with an empty body and close.
A GET without body gets a 200 at once (used as the readiness check).
"""

import socket
import sys
import threading

RECV = 1 << 20


class BadRequest(Exception):
    pass


def read_headers(conn):
    """Return (header block, bytes already read past it)."""
    data = b""
    while b"\r\n\r\n" not in data:
        more = conn.recv(65536)
        if not more:
            raise BadRequest("connection closed in headers")
        data += more
    head, _, rest = data.partition(b"\r\n\r\n")
    headers = {}
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip().lower()
    return headers, rest


def discard_length(conn, rest, length):
    length -= len(rest)
    buf = bytearray(RECV)
    while length > 0:
        n = conn.recv_into(buf, min(RECV, length))
        if not n:
            raise BadRequest("connection closed in body")
        length -= n


def discard_chunked(conn, data):
    """Parse chunk framing, discarding the data, up to the end of the trailers."""
    buf = bytearray(RECV)
    skip = 0          # bytes of chunk data (+ its CRLF) still to discard
    line = b""        # partial size/trailer line
    in_trailers = False
    n = len(data)
    buf[:n] = data
    while True:
        pos = 0
        while pos < n:
            if skip:
                step = min(skip, n - pos)
                skip -= step
                pos += step
                continue
            nl = buf.find(b"\n", pos, n)
            if nl < 0:
                line += buf[pos:n]
                break
            line += buf[pos:nl]
            pos = nl + 1
            text, line = line.strip(), b""
            if in_trailers:
                if not text:
                    return
            else:
                size = int(text.split(b";")[0], 16)
                if size == 0:
                    in_trailers = True
                else:
                    skip = size + 2
        n = conn.recv_into(buf, RECV)
        if not n:
            raise BadRequest("connection closed in chunked body")


def handle(conn):
    with conn:
        try:
            headers, rest = read_headers(conn)
            if headers.get(b"expect") == b"100-continue":
                conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            if b"chunked" in headers.get(b"transfer-encoding", b""):
                discard_chunked(conn, rest)
            elif b"content-length" in headers:
                discard_length(conn, rest, int(headers[b"content-length"]))
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n"
                         b"Connection: close\r\n\r\n")
        except (BadRequest, ValueError, OSError) as e:
            print("sink: %s" % e, file=sys.stderr, flush=True)


def main():
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", int(sys.argv[1])))
    srv.listen(64)
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    main()
