"""The edge's label sink: every processed frame's label map, on local disk.

The edge agent appends one record per frame the student labelled; the demo
and the tests read them back to score the edge against the teacher on every
processed frame (brief §7, §10.11). numpy and zlib only (edge-safe).

File format (all integers little-endian)::

    file header, 8 bytes:
        offset 0  4 bytes  magic b"CTLS"
        offset 4  2 bytes  format version (1), unsigned
        offset 6  2 bytes  reserved (0)
    then records, back to back until the end of the file:
        offset 0  8 bytes  pts_ms, signed: video time of the frame
        offset 8  4 bytes  model_version, unsigned: student version that labelled it
        offset 12 2 bytes  height H, unsigned
        offset 14 2 bytes  width W, unsigned
        offset 16 4 bytes  payload length N, unsigned
        offset 20 4 bytes  CRC-32 of the payload (zlib.crc32)
        offset 24 N bytes  payload: zlib-compressed H*W uint8 label map, row-major

The writer flushes after every record (not fsync: a process crash loses at
most the record being written, a power loss may lose more). A truncated
final record is therefore expected after a crash: the reader stops before
it (or raises with ``strict=True``); a CRC mismatch anywhere is an error.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, NamedTuple

import numpy as np

MAGIC = b"CTLS"
FORMAT_VERSION = 1
_FILE_HEADER = struct.Struct("<4sHH")
_RECORD_HEADER = struct.Struct("<qIHHII")  # pts_ms, model_version, height, width, payload length, crc32
FILE_HEADER_LEN = _FILE_HEADER.size  # 8
RECORD_HEADER_LEN = _RECORD_HEADER.size  # 24
_MAX_SIDE = 65535


class LabelSinkError(ValueError):
    """The file is not a label sink of a version this build reads, or is corrupt."""


class LabelRecord(NamedTuple):
    pts_ms: int
    model_version: int
    labels: np.ndarray  # HxW uint8


def _read_file_header(f: BinaryIO, path: Path) -> None:
    raw = f.read(FILE_HEADER_LEN)
    if len(raw) < FILE_HEADER_LEN:
        raise LabelSinkError(f"{path}: {len(raw)} bytes, too short for a label sink header")
    magic, version, _ = _FILE_HEADER.unpack(raw)
    if magic != MAGIC:
        raise LabelSinkError(f"{path}: magic {magic!r}, expected {MAGIC!r}")
    if version != FORMAT_VERSION:
        raise LabelSinkError(f"{path}: format version {version}, this build reads {FORMAT_VERSION}")


def _records(f: BinaryIO, path: Path, strict: bool) -> Iterator[tuple[int, LabelRecord]]:
    """(offset just past the record, record) for each complete record."""
    offset = FILE_HEADER_LEN
    while True:
        head = f.read(RECORD_HEADER_LEN)
        if not head:
            return
        if len(head) < RECORD_HEADER_LEN:
            if strict:
                raise LabelSinkError(f"{path}: truncated record header at offset {offset}")
            return
        pts_ms, version, height, width, length, crc = _RECORD_HEADER.unpack(head)
        payload = f.read(length)
        if len(payload) < length:
            if strict:
                raise LabelSinkError(f"{path}: truncated record payload at offset {offset}")
            return
        if zlib.crc32(payload) != crc:
            raise LabelSinkError(f"{path}: CRC mismatch in the record at offset {offset} (pts {pts_ms} ms)")
        try:
            raw = zlib.decompress(payload)
        except zlib.error as exc:
            raise LabelSinkError(f"{path}: record at offset {offset} does not inflate: {exc}") from None
        if len(raw) != height * width:
            raise LabelSinkError(f"{path}: record at offset {offset} holds {len(raw)} bytes for {width}x{height}")
        offset += RECORD_HEADER_LEN + length
        labels = np.frombuffer(raw, dtype=np.uint8).reshape(height, width)
        yield offset, LabelRecord(pts_ms, version, labels)


def read_labels(path: str | os.PathLike[str], *, strict: bool = False) -> Iterator[LabelRecord]:
    """Yield the records of a label sink in file order.

    A truncated final record (a crash while writing) ends the iteration, or
    raises :class:`LabelSinkError` with ``strict=True``.
    """
    path = Path(path)
    with path.open("rb") as f:
        _read_file_header(f, path)
        for _, record in _records(f, path, strict):
            yield record


class LabelSinkWriter:
    """Appends label records to a sink file, flushing after each one.

    ``append=False`` (the default) starts a new file. ``append=True`` keeps
    the records of an existing file, cutting off a truncated final record
    first, so that the file stays readable.
    """

    def __init__(self, path: str | os.PathLike[str], *, append: bool = False, level: int = 6) -> None:
        self.path = Path(path)
        self.level = level
        self.records = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if append and self.path.exists() and self.path.stat().st_size > 0:
            end = FILE_HEADER_LEN
            with self.path.open("rb") as f:
                _read_file_header(f, self.path)
                for end, _ in _records(f, self.path, strict=False):
                    self.records += 1
            self._f: BinaryIO = self.path.open("r+b")
            self._f.truncate(end)
            self._f.seek(end)
        else:
            self._f = self.path.open("wb")
            self._f.write(_FILE_HEADER.pack(MAGIC, FORMAT_VERSION, 0))
            self._f.flush()

    def write(self, pts_ms: int, model_version: int, labels: np.ndarray) -> None:
        """Append one frame's label map (``HxW`` uint8)."""
        if labels.ndim != 2 or labels.dtype != np.uint8:
            raise ValueError(f"labels must be a 2-D uint8 array, got {labels.dtype} of shape {labels.shape}")
        height, width = labels.shape
        if not (0 < height <= _MAX_SIDE and 0 < width <= _MAX_SIDE):
            raise ValueError(f"label map of {width}x{height} does not fit the format")
        payload = zlib.compress(np.ascontiguousarray(labels).tobytes(), self.level)
        head = _RECORD_HEADER.pack(int(pts_ms), int(model_version), height, width, len(payload), zlib.crc32(payload))
        self._f.write(head + payload)  # one write: a crash leaves at most this record partial
        self._f.flush()
        self.records += 1

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()

    def __enter__(self) -> LabelSinkWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["FORMAT_VERSION", "MAGIC", "LabelRecord", "LabelSinkError", "LabelSinkWriter", "read_labels"]
