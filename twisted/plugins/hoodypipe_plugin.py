"""twistd plugin: ``twistd -n hoodypipe`` (see hoodypipe.tap)."""

from twisted.application.service import ServiceMaker

hoodypipe = ServiceMaker(
    "hoodypipe",
    "hoodypipe.tap",
    "HTTP pipe: relay a stream from one sender to N receivers, with a live ?progress side channel",
    "hoodypipe",
)
