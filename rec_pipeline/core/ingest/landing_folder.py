"""Which files in the landing folder are complete and safe to land.

A file is ready when it was seen with the same size and mtime on the previous scan and has not been
touched for `settle_seconds`: writers that copy slowly are waited for. Hidden and temporary files,
folders, symlinks and unsupported or unsafe names are never landed (symlinks are not followed, so
nothing outside the folder can be read through one).
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from rec_pipeline.core.ingest.sources import UnsupportedFormatError, detect_format

SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$")
TEMPORARY_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", ".swp")


@dataclass(frozen=True)
class FileState:
    size: int
    mtime_ns: int
    inode: int

    @property
    def run_key(self) -> str:
        """Another file under a landed file's name (a new inode) is a new run, even with equal mtime."""
        return f"{self.size}-{self.mtime_ns}-{self.inode}"


@dataclass
class LandingScan:
    ready: dict[str, FileState] = field(default_factory=dict)
    waiting: dict[str, FileState] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)


def scan_landing_folder(
    folder: Path, previous: dict[str, FileState], now_ns: int, settle_seconds: float = 2.0
) -> LandingScan:
    scan = LandingScan()
    if not folder.is_dir():
        return scan
    for entry in sorted(folder.iterdir()):
        name = entry.name
        if name.startswith(".") or name.lower().endswith(TEMPORARY_SUFFIXES):
            continue
        refusal = _refusal(entry)
        if refusal:
            scan.refused[name] = refusal
            continue
        stat = entry.stat(follow_symlinks=False)
        state = FileState(stat.st_size, stat.st_mtime_ns, stat.st_ino)
        settled = now_ns - stat.st_mtime_ns >= settle_seconds * 1e9
        if previous.get(name) == state and settled:
            scan.ready[name] = state
        else:
            scan.waiting[name] = state
    return scan


def _refusal(entry: Path) -> str | None:
    if entry.is_symlink():
        return "symlinks are not followed"
    if not entry.is_file():
        return "only regular files are landed, not folders or devices"
    if not SAFE_NAME.match(entry.name):
        return "file names may use only letters, digits, '.', '_' and '-'"
    try:
        detect_format(entry)
    except UnsupportedFormatError as error:
        return str(error)
    return None


def archive_file(path: Path, archive_dir: Path, batch_id: str) -> Path:
    """Move a landed (or failed) file out of the landing folder, keeping every version."""
    archive_dir.mkdir(parents=True, exist_ok=True)
    target = archive_dir / f"{batch_id}-{path.name}"
    shutil.move(str(path), target)
    return target
