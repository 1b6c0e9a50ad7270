"""The one error every part of the daemon raises to refuse a request."""


class HTTPError(Exception):
    """A refusal: an HTTP status and the one-line message after ``[ERROR]``.

    ``message`` ends with its full stop; ``headers`` are extra response
    headers (``Allow``, ``Retry-After``).
    """

    def __init__(self, code: int, message: str, headers: dict[bytes, bytes] | None = None):
        super().__init__(code, message)
        self.code = code
        self.message = message
        self.headers = headers or {}

    @property
    def line(self) -> bytes:
        return f"[ERROR] {self.message}\n".encode("utf-8", "replace")
