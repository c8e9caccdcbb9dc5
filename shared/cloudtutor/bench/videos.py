"""The videos a bench command runs on: those named with ``--videos``, else the real ones under the data root."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path


def real_videos() -> list[Path]:
    """Every real video under the data root, by name."""
    from cloudtutor.config.common import default_data_root

    return sorted((default_data_root() / "video").glob("*.mp4"))


def resolve_videos(given: Sequence[str] | None, default: Callable[[], list[Path]] = real_videos) -> list[Path] | None:
    """``given`` as paths, else ``default()``; None, after saying which on stderr, when any is missing or none is found."""
    videos = [Path(v) for v in given] if given else default()
    missing = [str(v) for v in videos if not v.exists()]
    if not videos or missing:
        print(f"videos not found: {missing or 'none under the data root'}", file=sys.stderr)
        return None
    return videos


__all__ = ["real_videos", "resolve_videos"]
