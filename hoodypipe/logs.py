"""Log observers for twistd's ``--logger`` option.

    twistd -n --logger hoodypipe.logs.json hoodypipe     # one JSON object per line

Each transfer logs one event when it starts and one when it ends, with
``name``, ``bytes``, ``duration``, ``outcome`` and ``reason`` as fields.
"""

from __future__ import annotations

import sys

from twisted.logger import ILogObserver, jsonFileLogObserver


def json() -> ILogObserver:
    """Record-separated JSON events on standard output (journald, Loki, jq -c)."""
    return jsonFileLogObserver(sys.stdout, recordSeparator="")
