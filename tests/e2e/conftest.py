"""Fixtures of the end-to-end tests (the daemons themselves come from tests/conftest.py)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from ._helpers import kill_all

BIG = 256 * 1024 * 1024


@pytest.fixture(autouse=True)
def _no_stray_curls():
    """Kill any curl a test left running (a failed assertion, a timeout)."""
    yield
    kill_all()


@pytest.fixture(scope="session")
def big_random_file(tmp_path_factory) -> tuple[Path, str]:
    """256 MiB of os.urandom bytes on disk, and their sha256."""
    path = tmp_path_factory.mktemp("big") / "random.bin"
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        for _ in range(BIG // (1 << 24)):
            block = os.urandom(1 << 24)
            digest.update(block)
            f.write(block)
    return path, digest.hexdigest()
