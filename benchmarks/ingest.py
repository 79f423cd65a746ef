"""Ingest benchmark: the pipeline's `land_file` versus DuckDB's own bare read of the same file.

For each size and format, a simulated event file is generated once (streamed in chunks, cached in
the work folder), then landed `--repeats` times by each contender, alternating, each run in a fresh
subprocess that reports its own wall time and peak RSS:

* bare: a fresh DuckDB file, `CREATE TABLE events AS SELECT * FROM read_parquet/read_json(file)`
  with auto-detected types, then close (connect and close are timed);
* pipeline: a fresh warehouse, migrated before the timer starts, then `land_file` (hashing, parsing,
  contract checks, rejects, deduplication, manifest, commit) is timed.

Usage: python benchmarks/ingest.py [--sizes 1000000 5000000] [--formats parquet jsonl] [--repeats 3]
                                   [--workdir DIR] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from common import measured, peak_rss_mib, print_provenance, print_report

SEED = 0
CHUNK_ROWS = 250_000
# Events start well in the past, so none falls after the contract's "now + 1 day" whatever the date.
SIM_START = datetime(2020, 1, 1, tzinfo=timezone.utc)
BARE_READERS = {
    "parquet": "read_parquet($file)",
    "jsonl": "read_json($file, format = 'newline_delimited')",
}
MODES = ("bare", "pipeline")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 5_000_000])
    parser.add_argument("--formats", nargs="+", choices=sorted(BARE_READERS), default=["parquet", "jsonl"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "rec_pipeline_ingest_bench")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--db", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--events", type=int, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# --- input files ------------------------------------------------------------------------------


def input_file(workdir: Path, n_events: int, fmt: str) -> Path:
    """The cached event file, generated (atomically) on first use."""
    path = workdir / f"events-s{SEED}-{n_events}.{fmt}"
    if not path.exists():
        workdir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        (write_parquet if fmt == "parquet" else write_jsonl)(event_chunks(n_events), tmp)
        os.replace(tmp, path)
    return path


def event_chunks(n_events: int):
    from rec_pipeline.core.evaluation.simulator import Simulator, SimulatorConfig

    return Simulator(SimulatorConfig(seed=SEED, start=SIM_START)).iter_event_chunks(n_events, CHUNK_ROWS)


def write_parquet(chunks, path: Path) -> None:
    import pyarrow.parquet as pq

    writer = None
    try:
        for chunk in chunks:
            table = chunk.to_arrow()
            writer = writer or pq.ParquetWriter(path, table.schema)
            writer.write_table(table)
    finally:
        if writer is not None:
            writer.close()


def write_jsonl(chunks, path: Path) -> None:
    from rec_pipeline.core.ingest.event_files import (
        _as_text,  # ts as ISO-8601 UTC text ending in Z
    )

    with open(path, "wb") as out:
        for chunk in chunks:
            _as_text(chunk).write_ndjson(out)


# --- one measured run (child process) ---------------------------------------------------------


def run_child(args: argparse.Namespace) -> dict:
    seconds = bare_seconds(args.file, args.db) if args.child == "bare" else pipeline_seconds(args)
    return {"seconds": seconds, "peak_rss_mib": peak_rss_mib()}


def bare_seconds(file: Path, db: Path) -> float:
    import duckdb

    reader = BARE_READERS["parquet" if file.suffix == ".parquet" else "jsonl"]
    start = time.perf_counter()
    con = duckdb.connect(str(db))
    con.execute(f"CREATE TABLE events AS SELECT * FROM {reader}", {"file": str(file)})
    con.close()
    return time.perf_counter() - start


def pipeline_seconds(args: argparse.Namespace) -> float:
    from rec_pipeline.core.ingest.landing import land_file
    from rec_pipeline.core.ops.warehouse import Warehouse

    warehouse = Warehouse(args.db)
    with warehouse.connect():  # applies the migrations before the timer starts
        pass
    start = time.perf_counter()
    report = land_file(warehouse, args.file)
    seconds = time.perf_counter() - start
    if report.status != "landed" or report.landed != args.events:
        sys.exit(f"pipeline landed {report.landed} of {args.events} events: {report.as_dict()}")
    return seconds


# --- the parent: spawn, repeat, summarise -----------------------------------------------------


def spawn(mode: str, file: Path, n_events: int, workdir: Path) -> dict:
    run_dir = Path(tempfile.mkdtemp(prefix=f"{mode}-", dir=workdir))
    command = [sys.executable, str(Path(__file__).resolve()), "--child", mode, "--file", str(file),
               "--db", str(run_dir / "bench.duckdb"), "--events", str(n_events)]
    try:
        done = subprocess.run(command, capture_output=True, text=True)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    if done.returncode != 0:
        raise RuntimeError(f"{mode} run on {file.name} failed:\n{done.stderr.strip()}")
    return json.loads(done.stdout)


def measure(n_events: int, fmt: str, repeats: int, workdir: Path) -> dict:
    file = input_file(workdir, n_events, fmt)
    load_1min = os.getloadavg()[0]
    runs: dict[str, list[dict]] = {mode: [] for mode in MODES}
    for repeat in range(repeats):
        for mode in MODES if repeat % 2 == 0 else MODES[::-1]:  # alternate which goes first
            runs[mode].append(spawn(mode, file, n_events, workdir))
    row = {"events": n_events, "format": fmt, "file_mib": file.stat().st_size / 2**20, "load_1min": load_1min}
    for mode, results in runs.items():
        seconds = statistics.median(r["seconds"] for r in results)
        row |= {f"{mode}_s": seconds, f"{mode}_events_per_s": n_events / seconds,
                f"{mode}_peak_rss_mib": max(r["peak_rss_mib"] for r in results),
                f"{mode}_runs_s": [r["seconds"] for r in results]}
    row["ratio"] = row["pipeline_events_per_s"] / row["bare_events_per_s"]
    return row


def rss_growth(rows: list[dict]) -> dict:
    """Per format: peak RSS at the largest size ÷ at the smallest, for both contenders."""
    growth = {}
    for fmt in dict.fromkeys(r["format"] for r in rows):
        small, *_, large = sorted((r for r in rows if r["format"] == fmt), key=lambda r: r["events"])
        growth[fmt] = {"sizes": [small["events"], large["events"]]} | {
            mode: large[f"{mode}_peak_rss_mib"] / small[f"{mode}_peak_rss_mib"] for mode in MODES
        }
    return growth


def print_table(report: dict) -> None:
    print_provenance(report, extra=f"; repeats {report['repeats']}")
    header = (f"{'events':>9} {'format':<7} {'file MiB':>8} {'bare s':>7} {'bare ev/s':>10} {'pipe s':>7}"
              f" {'pipe ev/s':>10} {'ratio':>6} {'bare MiB':>8} {'pipe MiB':>8} {'load1':>5}")
    print(header, "-" * len(header), sep="\n")
    for r in report["results"]:
        print(f"{r['events']:>9,} {r['format']:<7} {r['file_mib']:>8.0f} {r['bare_s']:>7.2f}"
              f" {r['bare_events_per_s']:>10,.0f} {r['pipeline_s']:>7.2f} {r['pipeline_events_per_s']:>10,.0f}"
              f" {r['ratio']:>6.0%} {r['bare_peak_rss_mib']:>8.0f} {r['pipeline_peak_rss_mib']:>8.0f}"
              f" {r['load_1min']:>5.2f}")
    for fmt, g in report.get("rss_growth", {}).items():
        print(f"peak RSS growth {g['sizes'][1]:,}/{g['sizes'][0]:,} events, {fmt}:"
              f" pipeline x{g['pipeline']:.2f}, bare x{g['bare']:.2f}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(run_child(args)))
        return
    report = measured(lambda: [measure(n, fmt, args.repeats, args.workdir)
                               for n in args.sizes for fmt in args.formats], repeats=args.repeats)
    if len(args.sizes) > 1:
        report["rss_growth"] = rss_growth(report["results"])
    print_report(report, print_table, args.json)


if __name__ == "__main__":
    main()
