#!/usr/bin/env python3
"""Write N bytes of random data to stdout: one 16 MiB random block, repeated.

Prints "ready" on stderr once the block is generated, before writing.

Usage: _gen.py NBYTES   (used by the benchmarks as the upload data source)
"""

import fcntl
import os
import sys

BLOCK = 16 << 20
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


def main():
    remaining = int(sys.argv[1])
    block = memoryview(os.urandom(BLOCK))
    sys.stderr.write("ready\n")  # the benchmark starts its clock after this
    sys.stderr.flush()
    try:  # a bigger pipe means fewer wake-ups; same for every target
        fcntl.fcntl(1, F_SETPIPE_SZ, 1 << 20)
    except OSError:
        pass
    try:
        while remaining:
            chunk = block[: min(remaining, BLOCK)]
            while chunk:
                n = os.write(1, chunk)
                chunk = chunk[n:]
                remaining -= n
    except BrokenPipeError:
        sys.exit(1)


if __name__ == "__main__":
    main()
