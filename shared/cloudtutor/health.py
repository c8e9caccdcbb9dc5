"""A tiny HTTP endpoint per process: ``/metrics`` (Prometheus text) and
``/healthz`` (200 while every registered check passes, else 503 with the
failing checks). Kubernetes probes and Prometheus scrape it."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cloudtutor.metrics import Metrics

Check = Callable[[], bool]


class HealthServer:
    def __init__(self, metrics: Metrics, host: str = "0.0.0.0", port: int = 9100) -> None:
        self.metrics = metrics
        self._checks: dict[str, Check] = {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                if self.path == "/metrics":
                    self._send(200, server.metrics.render_prometheus(), "text/plain; version=0.0.4")
                elif self.path in ("/healthz", "/readyz"):
                    failing = server.failing_checks()
                    body = json.dumps({"ok": not failing, "failing": failing})
                    self._send(503 if failing else 200, body, "application/json")
                else:
                    self._send(404, "not found\n", "text/plain")

            def _send(self, code: int, body: str, ctype: str) -> None:
                data = body.encode()
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass  # scrapes every few seconds would flood the log

        self._httpd = ThreadingHTTPServer((host, port), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="health-http", daemon=True)

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    def add_check(self, name: str, check: Check) -> None:
        self._checks[name] = check

    def failing_checks(self) -> list[str]:
        failing = []
        for name, check in list(self._checks.items()):
            try:
                ok = bool(check())
            except Exception:  # a check that raises is a failing check, not a dead endpoint
                ok = False
            if not ok:
                failing.append(name)
        return failing

    def start(self) -> HealthServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
