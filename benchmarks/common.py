"""What every benchmark records beside its figures: the machine, the code measured, the load, and
each child process's own peak memory."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # benchmarks drive `dagster dev` with the tests' driver, rec_pipeline_tests.dagster_dev


def peak_rss_mib() -> float:
    """This process's own peak RSS (Linux VmHWM). Not getrusage's ru_maxrss: Linux carries the
    parent's high-water mark over fork and exec into it, so a child would report the parent's peak."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024


def machine() -> dict:
    import duckdb
    import polars

    return {"nproc": os.cpu_count(), "ram_gib": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30,
            "python": platform.python_version(), "duckdb": duckdb.__version__, "polars": polars.__version__,
            "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M")}


def code_version() -> dict:
    """The commit, the uncommitted pipeline files, and a digest of the pipeline code as it is now."""
    git = ["git", "-C", str(ROOT)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    modified = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no", "--", "rec_pipeline", "sql"],
                              capture_output=True, text=True).stdout.split()[1::2]
    digest = hashlib.sha256()
    for path in sorted([*ROOT.glob("rec_pipeline/**/*.py"), *ROOT.glob("sql/*.sql")]):
        digest.update(path.read_bytes())
    return {"commit": head, "modified": modified, "code_sha256": digest.hexdigest()[:12]}


def measured(results: Callable[[], list[dict]], **extra) -> dict:
    """A report: the machine, the code, the load before and after, and the results of `results()`."""
    report = {"machine": machine(), "code": code_version(), **extra, "load_start": list(os.getloadavg())}
    report["results"] = results()
    report["load_end"] = list(os.getloadavg())
    report["code_unchanged"] = code_version()["code_sha256"] == report["code"]["code_sha256"]
    return report


def print_report(report: dict, print_table: Callable[[dict], None], as_json: bool) -> None:
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        print_table(report)


def print_provenance(report: dict, extra: str = "") -> None:
    """The two lines above every results table: machine and load, then the code measured."""
    m = report["machine"]
    print(f"machine: {m['nproc']} CPUs, {m['ram_gib']:.1f} GiB RAM, Python {m['python']}, DuckDB {m['duckdb']},"
          f" Polars {m['polars']}, {m['date_utc']} UTC; load avg (1/5/15 min) start {fmt_load(report['load_start'])},"
          f" end {fmt_load(report['load_end'])}{extra}")
    code = report["code"]
    print(f"code: {code['commit']}, modified {code['modified'] or 'nothing'}, digest {code['code_sha256']}"
          + ("" if report["code_unchanged"] else "; WARNING: the pipeline code changed during the run"))


def fmt_load(load: list[float]) -> str:
    return "/".join(f"{x:.2f}" for x in load)


def scratch_home(folder: Path, catalogue):
    """(Settings, ModelRegistry) of a new pipeline home in `folder` whose warehouse knows `catalogue`."""
    from rec_pipeline.core.ingest.catalogue import upsert_items
    from rec_pipeline.core.model.registry import ModelRegistry
    from rec_pipeline.settings import Settings

    settings = Settings(home=Path(folder))
    settings.ensure_dirs()
    with settings.warehouse().connect() as con:
        upsert_items(con, catalogue)
    return settings, ModelRegistry(settings.models_dir)
