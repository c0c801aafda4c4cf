"""How ``meshpos run`` and ``meshpos hq run`` write their log, and how they tell systemd they serve.

``--log-format text`` (the default) is one line a person reads; ``--log-format json`` is one JSON
object per line for a collector (journald's, Loki, Elastic):
``{"at", "level", "logger", "message"}`` plus ``"exception"`` (the traceback) when there is one.
``at`` is UTC ISO-8601 with milliseconds, as every time meshpos writes.  The record is encoded by
the project's one JSON codec (core/codec.py); a formatter is the few lines below, not a dependency.

:func:`notify` speaks systemd's notification protocol (sd_notify(3)): a datagram to the socket in
``$NOTIFY_SOCKET``.  With ``Type=notify`` (docs/systemd/meshpos.service) systemd counts the terminal
as started once it serves, not when its process exists - units ordered after it start then.
"""

from __future__ import annotations

import logging
import os
import socket
from datetime import UTC, datetime

from core.clock import iso
from core.codec import encode_json

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {"at": iso(datetime.fromtimestamp(record.created, UTC)), "level": record.levelname,
                "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return encode_json(line)


def setup_logging(level: str, log_format: str = "text") -> None:
    """The root logger at ``level``, writing to stderr in ``log_format`` (one of :data:`LOG_FORMATS`)."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format {log_format!r}: one of {', '.join(LOG_FORMATS)}")
    handler = logging.StreamHandler()
    handler.setFormatter(JsonLines() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


def notify(state: str) -> bool:
    """Send ``state`` (``READY=1``, ``STOPPING=1``...) to systemd; ``False`` when not run by one.

    Never raises: a service manager that went away must not stop the terminal."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # an abstract socket (Linux)
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError as exc:
        logging.getLogger("meshpos").warning("could not notify systemd at %s: %s", address, exc)
        return False
    return True
