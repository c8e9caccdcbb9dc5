from __future__ import annotations

import json
import logging

from cloudtutor.config.common import LogSettings
from cloudtutor.logs import setup_logging


def test_json_lines_carry_structured_fields(capsys):
    log = setup_logging(LogSettings(level="INFO", json_lines=True), "cloudtutor.test")
    log.info("chunk rejected", extra={"fields": {"reason": "digest_mismatch", "device_id": "edge-0"}})
    log.debug("hidden")
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    doc = json.loads(lines[0])
    assert doc["msg"] == "chunk rejected" and doc["reason"] == "digest_mismatch" and doc["level"] == "INFO"
    logging.getLogger().handlers.clear()


def test_text_lines_append_fields(capsys):
    log = setup_logging(LogSettings(level="DEBUG"), "cloudtutor.test")
    log.debug("knobs changed", extra={"fields": {"sample_fps": 0.5}})
    err = capsys.readouterr().err
    assert "knobs changed" in err and '"sample_fps": 0.5' in err
    logging.getLogger().handlers.clear()
