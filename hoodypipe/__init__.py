"""hoodypipe: an HTTP pipe server with a live ?progress side channel."""

__version__ = "0.1.0"
