"""Write behaviour-event frames to the file formats the landing folder accepts.

The format follows the file name: ``.jsonl``, ``.jsonl.gz``, ``.csv``, ``.csv.gz`` or ``.parquet``.
Text formats carry ``ts`` as an ISO-8601 UTC string with a trailing ``Z`` (microsecond precision);
Parquet keeps the native ``Datetime("us", "UTC")``. Every write is atomic: the bytes go to a hidden
``.<name>.<random>.tmp`` file in the target folder, which is then ``os.replace``d onto the target,
so a folder watcher (which ignores dot-files) never sees a half-written file.
"""

from __future__ import annotations

import gzip
import os
import uuid
from pathlib import Path

import polars as pl

ISO_TS_FORMAT = "%Y-%m-%dT%H:%M:%S%.6fZ"
EVENT_FILE_SUFFIXES: tuple[str, ...] = (".jsonl.gz", ".csv.gz", ".jsonl", ".csv", ".parquet")


def event_file_format(path: str | os.PathLike[str]) -> str:
    """The format of an event file from its name (``"jsonl.gz"``, ``"csv"``, ...); ValueError if unknown."""
    name = Path(path).name.lower()
    for suffix in EVENT_FILE_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return suffix[1:]
    raise ValueError(f"unknown event file type {Path(path).name!r}; expected one of {EVENT_FILE_SUFFIXES}")


def _as_text(frame: pl.DataFrame) -> pl.DataFrame:
    """Datetime columns as ISO-8601 UTC strings ending in ``Z`` (naive ones are taken as UTC)."""
    cols = [
        pl.col(name).dt.convert_time_zone("UTC").dt.strftime(ISO_TS_FORMAT)
        if dtype.time_zone is not None  # type: ignore[attr-defined]
        else pl.col(name).dt.strftime(ISO_TS_FORMAT)
        for name, dtype in frame.schema.items()
        if isinstance(dtype, pl.Datetime)
    ]
    return frame.with_columns(cols) if cols else frame


def write_events(frame: pl.DataFrame, path: Path) -> Path:
    """Write an EVENT_SCHEMA frame to ``path`` atomically, in the format its suffix names."""
    path = Path(path)
    fmt = event_file_format(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        if fmt == "parquet":
            frame.write_parquet(tmp)
        else:
            text = _as_text(frame)
            with (gzip.open(tmp, "wb", compresslevel=6) if fmt.endswith(".gz") else open(tmp, "wb")) as out:
                if fmt.startswith("jsonl"):
                    text.write_ndjson(out)
                else:
                    text.write_csv(out)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
