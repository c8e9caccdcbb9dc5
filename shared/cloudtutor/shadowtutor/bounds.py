"""ShadowTutor's throughput and network-traffic model (§4.4, Table 1).

Symbols (seconds, bytes): ``t_si`` student inference, ``t_sd`` one
distillation step, ``t_ti`` teacher inference, ``t_net`` network latency of
one key frame (up and down), ``s_net`` bytes moved per key frame; ``n``
frames, ``k`` key frames and ``d`` distillation steps are counted after a
run. Traffic comes out in bytes per second, throughput in frames per second.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from cloudtutor.algorithms.stride import MAX_STRIDE, MIN_STRIDE

__all__ = [
    "Latencies",
    "bounds_report",
    "throughput",
    "throughput_lower",
    "throughput_upper",
    "total_time",
    "traffic",
    "traffic_lower",
    "traffic_upper",
]

MAX_UPDATES = 8


@dataclass(frozen=True)
class Latencies:
    t_si: float
    t_sd: float
    t_ti: float
    t_net: float
    s_net: float

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not value >= 0:
                raise ValueError(f"{name} must be a non-negative number, got {value}")


def total_time(lat: Latencies, n: int, k: int, d: int, t_c: float, min_stride: int = MIN_STRIDE) -> float:
    """Equation 3: ``(n - k MIN_STRIDE) t_si + d t_sd + k t_c``."""
    return (n - k * min_stride) * lat.t_si + d * lat.t_sd + k * t_c


def traffic(lat: Latencies, n: int, k: int, d: int, t_c: float, min_stride: int = MIN_STRIDE) -> float:
    """Equation 4: ``k s_net / t_tot`` (bytes per second)."""
    return k * lat.s_net / total_time(lat, n, k, d, t_c, min_stride)


def throughput(lat: Latencies, n: int, k: int, d: int, t_c: float, min_stride: int = MIN_STRIDE) -> float:
    """Equation 13: ``n / t_tot`` (frames per second)."""
    return n / total_time(lat, n, k, d, t_c, min_stride)


def traffic_lower(lat: Latencies, *, max_stride: int = MAX_STRIDE, max_updates: int = MAX_UPDATES) -> float:
    """Equation 8: fewest key frames, longest key frames, no concurrency."""
    return lat.s_net / (max_stride * lat.t_si + max_updates * lat.t_sd + lat.t_ti + lat.t_net)


def traffic_upper(lat: Latencies, *, min_stride: int = MIN_STRIDE) -> float:
    """Equation 12: a key frame every MIN_STRIDE frames, no distillation, full concurrency."""
    return lat.s_net / max(min_stride * lat.t_si, lat.t_net + lat.t_ti)


def throughput_lower(lat: Latencies, *, min_stride: int = MIN_STRIDE, max_updates: int = MAX_UPDATES) -> float:
    """Equation 14."""
    return min_stride / (min_stride * lat.t_si + max_updates * lat.t_sd + lat.t_ti + lat.t_net)


def throughput_upper(lat: Latencies, *, min_stride: int = MIN_STRIDE, max_stride: int = MAX_STRIDE) -> float:
    """Equation 15."""
    return max_stride / ((max_stride - min_stride) * lat.t_si + max(min_stride * lat.t_si, lat.t_net + lat.t_ti))


def bounds_report(
    lat: Latencies, *, min_stride: int = MIN_STRIDE, max_stride: int = MAX_STRIDE, max_updates: int = MAX_UPDATES,
    measured_fps: float | None = None, measured_bytes_per_s: float | None = None,
) -> dict[str, float | bool | None | dict[str, float]]:
    """The four bounds beside measured values, and whether each measurement lies within them."""
    lo_t, hi_t = traffic_lower(lat, max_stride=max_stride, max_updates=max_updates), traffic_upper(lat, min_stride=min_stride)
    lo_f = throughput_lower(lat, min_stride=min_stride, max_updates=max_updates)
    hi_f = throughput_upper(lat, min_stride=min_stride, max_stride=max_stride)
    return {
        "latencies": asdict(lat),
        "traffic_lower_Bps_eq8": lo_t, "traffic_upper_Bps_eq12": hi_t, "measured_traffic_Bps": measured_bytes_per_s,
        "traffic_within": None if measured_bytes_per_s is None else bool(lo_t <= measured_bytes_per_s <= hi_t),
        "throughput_lower_fps_eq14": lo_f, "throughput_upper_fps_eq15": hi_f, "measured_fps": measured_fps,
        "throughput_within": None if measured_fps is None else bool(lo_f <= measured_fps <= hi_f),
    }
