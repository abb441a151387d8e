"""The daemon's log: one key=value (logfmt) line per record on stderr; with journald's priority prefix and
no timestamp when stderr is the journal."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sys
from datetime import UTC, datetime

__all__ = ["kv", "LogfmtFormatter", "setup_logging", "STYLES"]

#: ``auto``: journal when stderr is connected to journald, else text
STYLES = ("auto", "text", "journal")

_LOGFMT = re.compile(r"^[A-Za-z_][\w.-]*=")
_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


def kv(value: object) -> str:
    """Format one logfmt value: bare when it has no space, quote or ``=``, JSON-quoted otherwise."""
    text = str(value)
    if text and not re.search(r'[\s"=\\]', text):
        return text
    return json.dumps(text, ensure_ascii=False)


class LogfmtFormatter(logging.Formatter):
    """``ts=... level=info logger=watcher pid=1 event=closed ...``; ``journal`` drops ts and prefixes ``<6>``."""

    def __init__(self, style: str = "text"):
        super().__init__()
        self.journal = style == "journal"

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        body = message if _LOGFMT.match(message) else f"msg={kv(message)}"
        head = f"level={record.levelname.lower()} logger={record.name} pid={record.process}"
        if record.exc_info:
            body += f" exc={kv(self.formatException(record.exc_info))}"
        if self.journal:  # journald reads the priority prefix and adds its own timestamp
            return f"<{_PRIORITY.get(record.levelno, 6)}>{head} {body}"
        ts = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        return f"ts={ts} {head} {body}"


def _journal_attached() -> bool:
    """True when stderr is the journal stream systemd set up (JOURNAL_STREAM names its device:inode)."""
    with contextlib.suppress(OSError, ValueError):
        dev, ino = os.environ.get("JOURNAL_STREAM", "").split(":")
        st = os.fstat(sys.stderr.fileno())
        return (st.st_dev, st.st_ino) == (int(dev), int(ino))
    return False


def setup_logging(style: str = "auto", level: str = "INFO") -> str:
    """Send key=value lines to stderr (no colours); return the style used."""
    if style == "auto":
        style = "journal" if _journal_attached() else "text"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LogfmtFormatter(style))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)  # third-party chatter only when it matters
    for name in ("watcher", "mlops_core"):
        logging.getLogger(name).setLevel(level)
    logging.captureWarnings(True)
    return style
