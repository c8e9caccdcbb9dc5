"""The label sink: records round-trip, a crash loses at most the last one, corruption is caught."""

from __future__ import annotations

import numpy as np
import pytest
from cloudtutor.labelsink import (
    FILE_HEADER_LEN,
    MAGIC,
    LabelSinkError,
    LabelSinkWriter,
    read_labels,
)


def _maps(n: int, shape=(24, 32)) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 20, size=shape, dtype=np.uint8) for _ in range(n)]


def test_records_round_trip_in_order(tmp_path):
    path = tmp_path / "sub" / "sink.bin"
    maps = _maps(5)
    with LabelSinkWriter(path) as sink:
        for i, labels in enumerate(maps):
            sink.write(i * 200, i // 2, labels)
        assert sink.records == 5
    assert path.read_bytes()[:4] == MAGIC
    records = list(read_labels(path))
    assert [r.pts_ms for r in records] == [0, 200, 400, 600, 800]
    assert [r.model_version for r in records] == [0, 0, 1, 1, 2]
    for record, labels in zip(records, maps):
        assert record.labels.dtype == np.uint8 and np.array_equal(record.labels, labels)


def test_each_record_is_flushed_before_close(tmp_path):
    path = tmp_path / "sink.bin"
    sink = LabelSinkWriter(path)
    sink.write(0, 0, _maps(1)[0])
    assert len(list(read_labels(path))) == 1  # readable while the writer is still open
    sink.close()


def test_a_truncated_last_record_is_skipped_or_strictly_refused(tmp_path):
    path = tmp_path / "sink.bin"
    with LabelSinkWriter(path) as sink:
        for i, labels in enumerate(_maps(3)):
            sink.write(i, 0, labels)
    data = path.read_bytes()
    path.write_bytes(data[:-5])  # a crash in the middle of the last write
    assert [r.pts_ms for r in read_labels(path)] == [0, 1]
    with pytest.raises(LabelSinkError, match="truncated"):
        list(read_labels(path, strict=True))


def test_append_cuts_a_truncated_tail_and_continues(tmp_path):
    path = tmp_path / "sink.bin"
    with LabelSinkWriter(path) as sink:
        for i, labels in enumerate(_maps(3)):
            sink.write(i, 0, labels)
    path.write_bytes(path.read_bytes()[:-5])
    with LabelSinkWriter(path, append=True) as sink:
        assert sink.records == 2
        sink.write(10, 1, _maps(1)[0])
    assert [r.pts_ms for r in read_labels(path, strict=True)] == [0, 1, 10]


def test_corruption_and_foreign_files_are_refused(tmp_path):
    path = tmp_path / "sink.bin"
    with LabelSinkWriter(path) as sink:
        sink.write(0, 0, _maps(1)[0])
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(LabelSinkError, match="CRC"):
        list(read_labels(path))
    other = tmp_path / "other.bin"
    other.write_bytes(b"NOPE" + bytes(FILE_HEADER_LEN))
    with pytest.raises(LabelSinkError, match="magic"):
        list(read_labels(other))


def test_only_2d_uint8_maps_are_written(tmp_path):
    with LabelSinkWriter(tmp_path / "sink.bin") as sink:
        with pytest.raises(ValueError):
            sink.write(0, 0, np.zeros((4, 4), dtype=np.int64))
        with pytest.raises(ValueError):
            sink.write(0, 0, np.zeros((4, 4, 3), dtype=np.uint8))
