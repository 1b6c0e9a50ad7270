"""Code shared by the tests and the benchmarks (bench/_common.py puts the repository root on
sys.path, so ``python bench/x.py`` imports it from the checkout).

- ``httpwire``: HTTP/1.1 by hand: requests, response heads, bodies (chunked decoding that knows
  whether the last chunk came), a blocking client connection;
- ``fuzzgrammar``: what the fuzzers send and what every answer must look like (one copy for
  tests/e2e/test_fuzz.py and bench/fuzz.py);
- ``faults``: the fault harness: parties that get killed, closed, reset or stalled, and the
  checks of what each receiver got (sha256-identical or visibly failed), for
  tests/e2e/test_faults.py and bench/soak.py.

Standard library only, but for ``faults``, which drives curl through tests/e2e/_helpers.py.
"""
