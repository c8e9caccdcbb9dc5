"""Process-local counters and gauges, rendered in Prometheus text format.

Every component takes a `Metrics` (or makes its own) so that tests can read
exactly what one component counted, without a process-global registry.
Names follow Prometheus conventions: `cloudtutor_<what>_total` for counters.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Mapping

LabelKey = tuple[tuple[str, str], ...]


def _key(labels: Mapping[str, object] | None) -> LabelKey:
    return tuple(sorted((k, str(v)) for k, v in (labels or {}).items()))


class Metrics:
    """Thread-safe counters and gauges keyed by name and label set."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[str, dict[LabelKey, float]] = defaultdict(dict)
        self._gauges: dict[str, dict[LabelKey, float]] = defaultdict(dict)
        self._help: dict[str, str] = {}

    def describe(self, name: str, help_text: str) -> None:
        self._help[name] = help_text

    def inc(self, name: str, amount: float = 1.0, **labels: object) -> None:
        key = _key(labels)
        with self._lock:
            series = self._counters[name]
            series[key] = series.get(key, 0.0) + amount

    def set(self, name: str, value: float, **labels: object) -> None:
        with self._lock:
            self._gauges[name][_key(labels)] = float(value)

    def get(self, name: str, **labels: object) -> float:
        """Value of one series (0 when never touched)."""
        key = _key(labels)
        with self._lock:
            for table in (self._counters, self._gauges):
                if name in table and key in table[name]:
                    return table[name][key]
        return 0.0

    def total(self, name: str) -> float:
        """Sum of a counter over all its label sets."""
        with self._lock:
            return sum(self._counters.get(name, {}).values())

    def snapshot(self) -> dict[str, dict[str, float]]:
        """{name: {"k=v,k=v": value}} for logs, reports and tests."""
        out: dict[str, dict[str, float]] = {}
        with self._lock:
            for table in (self._counters, self._gauges):
                for name, series in table.items():
                    out[name] = {",".join(f"{k}={v}" for k, v in key): val for key, val in series.items()}
        return out

    def render_prometheus(self) -> str:
        lines: list[str] = []
        with self._lock:
            for kind, table in (("counter", self._counters), ("gauge", self._gauges)):
                for name in sorted(table):
                    if name in self._help:
                        lines.append(f"# HELP {name} {self._help[name]}")
                    lines.append(f"# TYPE {name} {kind}")
                    for key, val in sorted(table[name].items()):
                        label_txt = ",".join(f'{k}="{_escape(v)}"' for k, v in key)
                        lines.append(f"{name}{{{label_txt}}} {val:g}" if label_txt else f"{name} {val:g}")
        return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
