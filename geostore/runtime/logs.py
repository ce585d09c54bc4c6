"""Structured JSON logs of a node: one JSON object per line, in a bounded rotating file.

Each record carries ``ts`` (UTC, ISO 8601), ``level``, ``logger``, ``node`` and ``msg``, plus
the exception text when there is one. The file rotates at ``max_bytes`` and keeps
``backups`` old files, so a node never fills its disk with logs. Warnings and worse also go
to stderr (the process supervisor's log).
"""

from __future__ import annotations

import datetime
import json
import logging
import logging.handlers
import os
import sys

LOG_FILE = "node.log"


class JsonFormatter(logging.Formatter):
    def __init__(self, node_id: str) -> None:
        super().__init__()
        self._node = node_id

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.datetime.fromtimestamp(record.created, tz=datetime.UTC)
        out = {
            "ts": ts.isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "node": self._node,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup_logging(
    log_dir: str,
    node_id: str,
    *,
    level: int = logging.INFO,
    max_bytes: int = 10 * 1024 * 1024,
    backups: int = 3,
) -> str:
    """Send the ``geostore`` loggers (and aiohttp's errors) to ``log_dir/node.log``."""
    os.makedirs(log_dir, exist_ok=True)
    path = os.path.join(log_dir, LOG_FILE)
    fmt = JsonFormatter(node_id)
    file_handler = logging.handlers.RotatingFileHandler(
        path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8"
    )
    file_handler.setFormatter(fmt)
    err_handler = logging.StreamHandler(sys.stderr)
    err_handler.setFormatter(fmt)
    err_handler.setLevel(logging.WARNING)
    root = logging.getLogger()
    root.handlers.clear()
    root.addHandler(file_handler)
    root.addHandler(err_handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("geostore").setLevel(level)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    return path
