from __future__ import annotations

import json
import urllib.error
import urllib.request

from cloudtutor.health import HealthServer
from cloudtutor.metrics import Metrics


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_metrics_and_health_over_http():
    metrics = Metrics()
    metrics.describe("cloudtutor_rejected_total", "Messages rejected, by reason.")
    metrics.inc("cloudtutor_rejected_total", reason="digest_mismatch")
    metrics.inc("cloudtutor_rejected_total", reason="digest_mismatch")
    metrics.set("cloudtutor_queue_depth", 3)
    healthy = {"broker": True}
    server = HealthServer(metrics, host="127.0.0.1", port=0).start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        code, text = _get(base + "/metrics")
        assert code == 200
        assert 'cloudtutor_rejected_total{reason="digest_mismatch"} 2' in text
        assert "# TYPE cloudtutor_queue_depth gauge" in text and "cloudtutor_queue_depth 3" in text
        server.add_check("broker", lambda: healthy["broker"])
        server.add_check("redis", lambda: 1 / 0)  # a raising check reports as failing
        code, body = _get(base + "/healthz")
        assert code == 503 and json.loads(body)["failing"] == ["redis"]
        server._checks.pop("redis")
        assert _get(base + "/healthz")[0] == 200
        healthy["broker"] = False
        assert _get(base + "/healthz")[0] == 503
        assert _get(base + "/nope")[0] == 404
    finally:
        server.stop()
