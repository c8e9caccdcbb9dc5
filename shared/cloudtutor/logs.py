"""Logging set-up shared by every process: text for people, JSON lines for
log collectors. Structured fields go in ``extra={"fields": {...}}``."""

from __future__ import annotations

import json
import logging
import sys
import time

from cloudtutor.config.common import LogSettings


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": round(record.created, 3),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        doc.update(getattr(record, "fields", None) or {})
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
        self.converter = time.gmtime

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = getattr(record, "fields", None)
        return f"{text} {json.dumps(fields, default=str, sort_keys=True)}" if fields else text


def setup_logging(settings: LogSettings, name: str | None = None) -> logging.Logger:
    """Configure the root logger once per process; returns ``name``'s logger."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if settings.json_lines else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.level)
    # paho logs every packet at DEBUG; keep it quiet unless asked.
    logging.getLogger("paho").setLevel(max(logging.INFO, root.level))
    return logging.getLogger(name or "cloudtutor")
