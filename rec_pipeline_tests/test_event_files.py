"""event_files.write_events: every format round-trips, unknown suffixes fail, writes are atomic."""

from __future__ import annotations

import gzip
import io
import os
from datetime import datetime, timezone
from pathlib import Path

import polars as pl
import pytest

from rec_pipeline.core.ingest.contract import EVENT_SCHEMA
from rec_pipeline.core.ingest.event_files import event_file_format, write_events

UTC = timezone.utc
SUFFIXES = [".jsonl", ".jsonl.gz", ".csv", ".csv.gz", ".parquet"]


def sample_events() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "event_id": ["e1", "e2", "e3"],
            "user_id": ["u1", "u2", "u1"],
            "item_id": ["i1", "i2", "i3"],
            "event_type": ["view", "purchase", "rating"],
            "ts": [
                datetime(2026, 1, 1, 10, 0, 0, 123456, tzinfo=UTC),
                datetime(2026, 1, 1, 10, 5, tzinfo=UTC),
                datetime(2026, 1, 2, 0, 0, 0, 1, tzinfo=UTC),
            ],
            "value": [None, 19.99, 4.5],
            "session_id": ["s1", "s2", None],
            "context": ['{"device":"mobile"}', None, 'a, "quoted", value'],
        },
        schema=EVENT_SCHEMA,
    )


def read_back(path: Path) -> pl.DataFrame:
    """Read an event file with plain Polars and restore EVENT_SCHEMA."""
    name = path.name
    if name.endswith(".parquet"):
        return pl.read_parquet(path)
    raw = gzip.decompress(path.read_bytes()) if name.endswith(".gz") else path.read_bytes()
    if ".jsonl" in name:
        frame = pl.read_ndjson(io.BytesIO(raw), schema={**EVENT_SCHEMA, "ts": pl.String()})
    else:
        frame = pl.read_csv(io.BytesIO(raw), schema={**EVENT_SCHEMA, "ts": pl.String()})
    return frame.with_columns(
        pl.col("ts").str.to_datetime("%Y-%m-%dT%H:%M:%S%.fZ", time_unit="us", time_zone="UTC")
    )


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_every_suffix_round_trips(tmp_path: Path, suffix: str) -> None:
    frame = sample_events()
    path = write_events(frame, tmp_path / f"batch{suffix}")
    assert path == tmp_path / f"batch{suffix}"
    back = read_back(path)
    assert back.schema == pl.Schema(EVENT_SCHEMA)
    assert back.equals(frame)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"batch{suffix}"]


@pytest.mark.parametrize("suffix", [".jsonl", ".csv.gz"])
def test_text_timestamps_are_iso_utc_with_z(tmp_path: Path, suffix: str) -> None:
    path = write_events(sample_events(), tmp_path / f"b{suffix}")
    raw = path.read_bytes()
    text = (gzip.decompress(raw) if suffix.endswith(".gz") else raw).decode()
    assert "2026-01-01T10:00:00.123456Z" in text
    assert "2026-01-02T00:00:00.000001Z" in text


def test_gzip_files_are_really_gzip(tmp_path: Path) -> None:
    path = write_events(sample_events(), tmp_path / "b.jsonl.gz")
    assert path.read_bytes()[:2] == b"\x1f\x8b"


@pytest.mark.parametrize("name", ["b.json", "b.txt", "b.gz", "b", "b.parquet.gz", ".jsonl"])
def test_unknown_suffix_raises(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError):
        write_events(sample_events(), tmp_path / name)
    assert list(tmp_path.iterdir()) == []


def test_format_is_case_insensitive() -> None:
    assert event_file_format("x/EVENTS.JSONL.GZ") == "jsonl.gz"
    assert event_file_format("a.b.csv") == "csv"


def test_empty_frame_round_trips(tmp_path: Path) -> None:
    empty = pl.DataFrame(schema=EVENT_SCHEMA)
    for suffix in (".parquet", ".csv"):
        back = read_back(write_events(empty, tmp_path / f"e{suffix}"))
        assert back.height == 0


def test_overwrite_is_atomic_and_leaves_no_temp_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "batch.jsonl"
    write_events(sample_events(), target)
    seen: list[tuple[str, str]] = []
    real_replace = os.replace

    def spy(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        seen.append((Path(src).name, Path(dst).name))
        assert Path(src).parent == target.parent  # same folder, so the rename is atomic
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    write_events(sample_events().head(1), target)
    assert len(seen) == 1
    tmp_name, dst_name = seen[0]
    assert tmp_name.startswith(".") and tmp_name.endswith(".tmp") and dst_name == "batch.jsonl"
    assert read_back(target).height == 1
    assert [p.name for p in tmp_path.iterdir()] == ["batch.jsonl"]


def test_failed_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def half_write(self: pl.DataFrame, file: object, *args: object, **kwargs: object) -> None:
        Path(str(file)).write_bytes(b"PAR1 half")
        raise OSError("disk full")

    monkeypatch.setattr(pl.DataFrame, "write_parquet", half_write)
    with pytest.raises(OSError, match="disk full"):
        write_events(sample_events(), tmp_path / "bad.parquet")
    assert list(tmp_path.iterdir()) == []


def test_creates_missing_folder(tmp_path: Path) -> None:
    path = write_events(sample_events(), tmp_path / "a" / "b" / "x.parquet")
    assert path.exists()
