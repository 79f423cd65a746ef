"""Soak: many files of mixed quality through the landing sensor under `dagster dev`, while a reader
queries serving.duckdb in a loop.

A fresh `dagster dev` (the repository's dagster.yaml: one warehouse slot, 4 concurrent runs, one
automatic retry) gets `--files` files, one every `--interval` seconds, renamed into landing/:
* good: `--events` simulated events;
* with bad rows: the same, with 5% of the rows broken (quarantined);
* held back: a bot flood (a quarter of the files' worth of one item, clicked by eight bots);
* unreadable: bytes that are not an event file (the run fails by design, with the reason recorded).
The kinds cycle good, good, good, bad rows, good, held back, good, good, unreadable, good.

Meanwhile a reader process opens serving.duckdb read-only in a loop and asks one user's list (as an
app would), counting every error. At the end, when every file has a finished landing run, no run is
in flight and a refresh has learnt every validated batch, the script reports:
* runs by status; failed runs whose error mentions a lock (must be 0);
* reader queries and errors (must be 0);
* accounting: per file, rows written = read = landed + duplicates + rejected, and every unreadable
  file recorded as failed with its reason.

Usage: python benchmarks/soak.py [--files 200] [--events 2000] [--interval 3] [--json]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import re
import tempfile
import time
from pathlib import Path

from common import measured, print_provenance, print_report

KINDS = ("good", "good", "good", "bad_rows", "good", "held_back", "good", "good", "unreadable", "good")
TIMEOUT_S = 3_600
LOCK = re.compile(r"\block(ed|s)?\b", re.IGNORECASE)  # DuckDB's "Could not set lock", not "block"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--events", type=int, default=2_000)
    parser.add_argument("--interval", type=float, default=3.0, help="seconds between two files")
    parser.add_argument("--refresh-interval", type=int, default=30, help="REC_PIPELINE_REFRESH_INTERVAL_S")
    parser.add_argument("--json", action="store_true")
    return parser.parse_args(argv)


def make_file(kind: str, frame, folder: Path, name: str) -> tuple[Path, int]:
    """(path written aside, rows in it) for one file of `kind` made from simulated `frame`."""
    import polars as pl

    from rec_pipeline.core.ingest.event_files import write_events

    if kind == "unreadable":
        path = folder / f"{name}.parquet"
        path.write_bytes(f"PAR1 {name} is not a parquet file ".encode() * 100)
        return path, 0
    if kind == "held_back":
        flood = pl.concat([frame.head(1)] * (3 * frame.height)).with_row_index("n").with_columns(
            user_id=pl.format("bot-{}", pl.col("n") % 8), item_id=pl.lit(frame["item_id"][0]),
            event_type=pl.lit("click"), event_id=pl.format("{}-flood-{}", pl.lit(name), "n")).drop("n")
        frame = pl.concat([frame, flood])
    path = write_events(frame, folder / f"{name}.jsonl")
    if kind == "bad_rows":
        lines = path.read_text().splitlines()
        for k in range(0, len(lines), 20):
            lines[k] = '{"user_id": null, "item_id": "broken", "event_type": "teleport"}'
        path.write_text("\n".join(lines) + "\n")
    return path, frame.height


def reader(serving_path: str, stop, counts) -> None:
    """Query serving.duckdb in a loop until `stop` is set; counts[0] queries, counts[1] errors."""
    import duckdb

    while not stop.is_set():
        if not os.path.exists(serving_path):
            time.sleep(0.2)
            continue
        try:
            with duckdb.connect(serving_path, read_only=True) as con:
                user = con.execute("SELECT any_value(user_id) FROM recommendations").fetchall()[0][0]
                con.execute("SELECT * FROM recommendations_for(?)", [user]).fetchall()
            counts[0] += 1
        except Exception as error:  # noqa: BLE001 (every reader error is what is measured)
            counts[1] += 1
            print(f"reader error: {type(error).__name__}: {error}", flush=True)
        time.sleep(0.05)


def run(args: argparse.Namespace) -> list[dict]:
    from rec_pipeline.core.evaluation.simulator import Simulator, SimulatorConfig
    from rec_pipeline_tests.dagster_dev import DagsterDev

    chunks = Simulator(SimulatorConfig(seed=0, n_users=5_000, n_items=2_000)).iter_event_chunks(
        args.files * args.events, args.events)
    with tempfile.TemporaryDirectory(prefix="rec_pipeline_soak_") as base:
        staging = Path(base) / "made"
        staging.mkdir()
        written = {}
        for k in range(args.files):
            kind = KINDS[k % len(KINDS)]
            path, rows = make_file(kind, next(chunks), staging, f"soak-{k:03d}")
            written[path.name] = (kind, rows)
        server = DagsterDev(Path(base), {"REC_PIPELINE_REFRESH_INTERVAL_S": str(args.refresh_interval)}).start()
        stop, counts = multiprocessing.Event(), multiprocessing.Array("l", 2)
        reading = multiprocessing.Process(target=reader, args=(str(server.pipeline_home / "serving.duckdb"), stop,
                                                               counts))
        reading.start()
        started = time.monotonic()
        try:
            landing = server.pipeline_home / "landing"
            landing.mkdir(parents=True, exist_ok=True)
            for name in written:
                os.replace(staging / name, landing / name)
                time.sleep(args.interval)
            runs = wait_until_settled(server, set(written))
        finally:
            stop.set()
            reading.join()
            server.stop()
            elapsed = time.monotonic() - started
            accounting = account(server, written)
    return [{"files": args.files, "events_per_file": args.events, "elapsed_s": round(elapsed, 1),
             "reader_queries": counts[0], "reader_errors": counts[1], **runs, **accounting}]


def wait_until_settled(server, names: set[str]) -> dict:
    """Every file has a finished landing run, no run is in flight, and every validated batch has been
    learnt by a refresh."""
    import dagster as dg

    from rec_pipeline_tests.dagster_dev import wait_for

    done = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}

    def settled() -> dict | None:
        with dg.DagsterInstance.from_config(str(server.dagster_home)) as instance:
            records = instance.get_run_records()
            landing = [r for r in records if r.dagster_run.tags.get("dagster/partition") in names]
            finished = {r.dagster_run.tags["dagster/partition"] for r in landing if r.dagster_run.status in done}
            if finished != names or any(r.dagster_run.status not in done for r in records):
                return None
            refreshes = [r for r in records if dg.AssetKey("recommendations") in (r.dagster_run.asset_selection or ())]
            if unlearnt_batches(server):
                return None
            failed = [(r.dagster_run.tags.get("dagster/partition", r.dagster_run.job_name),
                       _failure_message(instance, r.dagster_run.run_id))
                      for r in records if r.dagster_run.status == dg.DagsterRunStatus.FAILURE]
            return {"runs": len(records), "landing_runs": len(landing), "refresh_runs": len(refreshes),
                    "failed_runs": len(failed), "failed_runs_lock": sum(bool(LOCK.search(m)) for _, m in failed),
                    "failures": [f"{name}: {message[:160]}" for name, message in failed]}

    return wait_for("every file landed and a refresh after the last", settled, TIMEOUT_S, every_s=10)


def unlearnt_batches(server) -> int:
    import duckdb

    with duckdb.connect(str(server.pipeline_home / "warehouse.duckdb"), read_only=True) as con:
        return con.execute("SELECT count(*) FROM ingested_files WHERE quality_status = 'passed'"
                           " AND batch_id NOT IN (SELECT batch_id FROM refresh_batches)").fetchall()[0][0]


def _failure_message(instance, run_id: str) -> str:
    """The first step failure's error message (or the run failure's), on one line."""
    import dagster as dg

    for kind in (dg.DagsterEventType.STEP_FAILURE, dg.DagsterEventType.RUN_FAILURE):
        for record in instance.get_records_for_run(run_id, of_type=kind).records:
            data = record.event_log_entry.dagster_event.event_specific_data
            error = getattr(data, "error", None)
            return " ".join((error.message if error else record.event_log_entry.message or "").split())
    return ""


def account(server, written: dict[str, tuple[str, int]]) -> dict:
    """Rows written against the manifest, file by file."""
    import duckdb

    with duckdb.connect(str(server.pipeline_home / "warehouse.duckdb"), read_only=True) as con:
        rows = con.execute("SELECT path, status, reason, quality_status, rows_read, rows_landed, rows_duplicate,"
                           " rows_rejected FROM ingested_files").fetchall()
    manifest = {Path(row[0]).name: row[1:] for row in rows}  # the path each file was read from
    mismatches = []
    for name, (kind, expected_rows) in written.items():
        entry = manifest.get(name)
        if entry is None:
            mismatches.append(f"{name}: no manifest row")
            continue
        status, reason, quality, read, landed, duplicates, rejected = entry
        if kind == "unreadable":
            if status != "failed" or not reason:
                mismatches.append(f"{name}: unreadable but {status}")
        elif read != expected_rows or read != landed + duplicates + rejected:
            mismatches.append(f"{name}: wrote {expected_rows}, read {read} = {landed}+{duplicates}+{rejected}")
        elif (quality == "failed") != (kind == "held_back"):
            mismatches.append(f"{name}: {kind} but quality {quality}")
    return {"files_in_manifest": len(manifest), "accounting_mismatches": len(mismatches), "mismatches": mismatches[:10]}


def print_table(report: dict) -> None:
    print_provenance(report)
    [r] = report["results"]
    for key, value in r.items():
        print(f"{key:<24} {value}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    report = measured(lambda: run(args), files=args.files, events=args.events, interval_s=args.interval)
    print_report(report, print_table, args.json)


if __name__ == "__main__":
    main()
