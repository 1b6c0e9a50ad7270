"""What an ``Accept`` header asks for: its media ranges with their q-values."""

from __future__ import annotations


def media_ranges(accept: bytes | None) -> list[tuple[str, float]]:
    """Each listed media range (lowercased) and its q, in the order listed.

    A q that is not a number counts as 0, i.e. not acceptable.
    """
    if not accept:
        return []
    ranges: list[tuple[str, float]] = []
    for item in accept.decode("latin-1").split(","):
        media, *params = [p.strip() for p in item.split(";")]
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        ranges.append((media.lower(), q))
    return ranges
