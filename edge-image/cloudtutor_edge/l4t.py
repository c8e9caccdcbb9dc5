"""The L4T line check the Jetson images run at start (deployment issue).

A Jetson image is built on one L4T line (JetPack 6 = L4T r36): its CUDA,
cuDNN and TensorRT user-space libraries must match the kernel driver the
device was flashed with. Run on another line, the agent would fail later and
obscurely (a CUDA "driver version insufficient", a TensorRT engine that will
not load), so it refuses at start with a message that names both lines.

The image bakes the line it was built for into ``$CT_L4T_LINE`` (``r36`` or
``r36.4``: a major release, optionally with its major revision). The host's
line is in ``/etc/nv_tegra_release``, which the container must see (the
compose file and README mount the host's copy read-only). The variable is not
under the ``CLOUDTUTOR_`` prefix on purpose: that prefix is reserved for
settings, and the config loaders refuse names they do not know.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

LINE_ENV = "CT_L4T_LINE"  # the line the image was built for; unset or empty: no check
RELEASE_FILE_ENV = "CT_L4T_RELEASE_FILE"  # where to read the host's release (default below)
RELEASE_FILE = Path("/etc/nv_tegra_release")

# "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, DATE: ..."
_RELEASE = re.compile(r"^#\s*R(?P<major>\d+)\s*\(release\),\s*REVISION:\s*(?P<revision>\d+(?:\.\d+)*)", re.MULTILINE)
_BOARD = re.compile(r"BOARD:\s*(?P<board>[^,\s]+)")
_LINE = re.compile(r"^[rR](?P<major>\d+)(?:\.(?P<minor>\d+))?$")


class L4tError(RuntimeError):
    """The device's L4T line is not the one this image was built for (or cannot be read)."""


@dataclass(frozen=True)
class L4tRelease:
    major: int  # 36 for JetPack 6
    revision: str  # "4.3"
    board: str | None = None

    @property
    def minor(self) -> int:
        return int(self.revision.split(".")[0])

    def __str__(self) -> str:
        return f"r{self.major}.{self.revision}"


@dataclass(frozen=True)
class L4tLine:
    major: int
    minor: int | None = None  # None: any revision of the major release

    def accepts(self, release: L4tRelease) -> bool:
        return release.major == self.major and (self.minor is None or release.minor == self.minor)

    def __str__(self) -> str:
        return f"r{self.major}" + (f".{self.minor}" if self.minor is not None else "")


def parse_release(text: str) -> L4tRelease:
    """The release in the text of ``/etc/nv_tegra_release``; L4tError if it has none."""
    match = _RELEASE.search(text)
    if match is None:
        first = text.strip().splitlines()[0] if text.strip() else "(empty)"
        raise L4tError(f"cannot read an L4T release from nv_tegra_release: {first!r}")
    board = _BOARD.search(text)
    return L4tRelease(int(match["major"]), match["revision"], board["board"] if board else None)


def parse_line(value: str) -> L4tLine:
    match = _LINE.fullmatch(value.strip())
    if match is None:
        raise L4tError(f"{LINE_ENV}={value!r} is not an L4T line such as 'r36' or 'r36.4'")
    minor = match["minor"]
    return L4tLine(int(match["major"]), int(minor) if minor is not None else None)


def check(expected: str, release_text: str | None, *, source: str = str(RELEASE_FILE)) -> L4tRelease:
    """The host's release if it is on the ``expected`` line, else L4tError naming both.

    ``release_text`` None means the file was not there: on a Jetson image
    that is a container without the host's file, which cannot be verified.
    """
    line = parse_line(expected)
    if release_text is None:
        raise L4tError(
            f"this image is built for L4T {line} but {source} is missing, so the device's L4T line cannot be "
            f"checked: run the container with the NVIDIA runtime on a Jetson and mount the host's file "
            f"(-v /etc/nv_tegra_release:/etc/nv_tegra_release:ro)"
        )
    release = parse_release(release_text)
    if not line.accepts(release):
        raise L4tError(
            f"L4T mismatch: this image is built for L4T {line} but the device runs L4T {release} "
            f"(from {source}); its CUDA and TensorRT libraries would not match the device's driver. "
            f"Use the image built for r{release.major} or flash the device with the L4T {line} line (see edge-image/README.md)"
        )
    return release


def check_environment(env: Mapping[str, str] | None = None) -> L4tRelease | None:
    """The start-up check: reads ``$CT_L4T_LINE`` and the release file; None when no line is expected."""
    env = os.environ if env is None else env
    expected = env.get(LINE_ENV, "").strip()
    if not expected:
        return None  # the generic arm64 image and development machines
    path = Path(env.get(RELEASE_FILE_ENV) or RELEASE_FILE)
    try:
        text: str | None = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        text = None
    except OSError as exc:
        raise L4tError(f"cannot read {path}: {exc.strerror}") from None
    return check(expected, text, source=str(path))
