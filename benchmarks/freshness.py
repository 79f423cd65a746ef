"""Freshness latency under `dagster dev`: from an event file appearing in the landing folder to
recommendations that reflect it being published, with its parts.

A fresh `dagster dev` (webserver, daemon, one process per run; the repository's dagster.yaml) gets a
warm-up file first, so that a model exists, then `--files` files of `--events` simulated events,
one at a time: each is renamed into landing/ and the script waits until a refresh run that started
after the file's landing run ended has finished (a refresh consumes every validated batch waiting,
so that refresh learnt from the file and republished what it had to). The parts come from the
Dagster event log:

* sensor pickup: rename -> the landing run is created (landing sensor every 5 s; files must settle);
* landing run: created -> finished (run queue, process start, landing, GX validation, archive);
* automation pickup: landing run finished -> refresh run created (`REC_PIPELINE_REFRESH_INTERVAL_S`);
* refresh run: created -> finished (process start with TensorFlow import, training, gate, publish);
  its `publish` stage (swap + serving copy) is reported apart from the refresh's stage timings.

Usage: python benchmarks/freshness.py [--files 5] [--events 10000] [--refresh-interval 10]
                                      [--warmup-events 50000] [--json]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from common import measured, print_provenance, print_report

PARTS = ("pickup_s", "landing_run_s", "automation_pickup_s", "refresh_run_s", "publish_s", "total_s")
TIMEOUT_S = 600


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=5)
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--refresh-interval", type=int, default=10, help="REC_PIPELINE_REFRESH_INTERVAL_S")
    parser.add_argument("--warmup-events", type=int, default=50_000)
    parser.add_argument("--json", action="store_true")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> list[dict]:
    from rec_pipeline.core.evaluation.simulator import Simulator, SimulatorConfig
    from rec_pipeline_tests.dagster_dev import DagsterDev

    simulator = Simulator(SimulatorConfig(seed=0, n_users=5_000, n_items=2_000))
    chunks = simulator.iter_event_chunks(args.warmup_events + args.files * args.events, args.events)
    warmup = [next(chunks) for _ in range(max(1, args.warmup_events // args.events))]
    with tempfile.TemporaryDirectory(prefix="rec_pipeline_freshness_") as base:
        server = DagsterDev(Path(base), {"REC_PIPELINE_REFRESH_INTERVAL_S": str(args.refresh_interval)}).start()
        try:
            import polars as pl

            measure_file(server, pl.concat(warmup), "warmup.parquet")
            return [measure_file(server, next(chunks), f"file-{i:02d}.parquet") for i in range(args.files)]
        finally:
            server.stop()


def measure_file(server, frame, name: str) -> dict:
    from rec_pipeline_tests.dagster_dev import wait_for

    dropped = server.drop(frame, name)
    landing = wait_for(f"{name}'s landing run", lambda: finished_run(server, {"dagster/partition": name}), TIMEOUT_S)
    refresh = wait_for(f"a refresh after {name}", lambda: refresh_after(server, landing["end"]), TIMEOUT_S)
    return {"file": name, "events": frame.height,
            "pickup_s": landing["created"] - dropped, "landing_run_s": landing["end"] - landing["created"],
            "automation_pickup_s": refresh["created"] - landing["end"],
            "refresh_run_s": refresh["end"] - refresh["created"], "publish_s": refresh["publish_s"],
            "total_s": refresh["end"] - dropped, "promoted": refresh["promoted"]}


def finished_run(server, tags: dict) -> dict | None:
    import dagster as dg

    with dg.DagsterInstance.from_config(str(server.dagster_home)) as instance:
        records = instance.get_run_records(filters=dg.RunsFilter(tags=tags, statuses=[dg.DagsterRunStatus.SUCCESS]))
    if not records:
        return None
    record = records[0]
    return {"run_id": record.dagster_run.run_id, "created": record.create_timestamp.timestamp(),
            "end": record.end_time}


def refresh_after(server, landed_at: float) -> dict | None:
    """The first finished refresh run created after `landed_at`, with its publish time and decision."""
    import dagster as dg

    with dg.DagsterInstance.from_config(str(server.dagster_home)) as instance:
        records = instance.get_run_records(filters=dg.RunsFilter(
            statuses=[dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE]))
        later = sorted((r for r in records if r.create_timestamp.timestamp() > landed_at
                        and dg.AssetKey("recommendations") in (r.dagster_run.asset_selection or ())),
                       key=lambda r: r.create_timestamp)
        if not later:
            return None
        record = later[0]
        if record.dagster_run.status != dg.DagsterRunStatus.SUCCESS:
            raise RuntimeError(f"refresh run {record.dagster_run.run_id} failed")
        metadata = materialization_metadata(instance, record.dagster_run.run_id)
    return {"created": record.create_timestamp.timestamp(), "end": record.end_time,
            "publish_s": metadata.get("features", {}).get("seconds/publish", 0.0),
            "promoted": metadata.get("challenger_model", {}).get("promoted")}


def materialization_metadata(instance, run_id: str) -> dict[str, dict]:
    import dagster as dg

    events = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION).records
    return {e.event_log_entry.asset_materialization.asset_key.to_user_string():
            {k: v.value for k, v in e.event_log_entry.asset_materialization.metadata.items()} for e in events}


def summary(rows: list[dict]) -> dict:
    return {part: statistics.median(r[part] for r in rows) for part in PARTS}


def print_table(report: dict) -> None:
    print_provenance(report)
    print(f"refresh automation interval {report['refresh_interval_s']} s; {report['events']:,} events per file")
    print(f"{'file':<18}" + "".join(f"{p.removesuffix('_s'):>19}" for p in PARTS) + f"{'promoted':>10}")
    for r in report["results"]:
        print(f"{r['file']:<18}" + "".join(f"{r[p]:>19.1f}" for p in PARTS) + f"{str(r['promoted']):>10}")
    print(f"{'median':<18}" + "".join(f"{v:>19.1f}" for v in report["summary"].values()))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    report = measured(lambda: run(args), refresh_interval_s=args.refresh_interval, events=args.events)
    report["summary"] = summary(report["results"])
    print_report(report, print_table, args.json)


if __name__ == "__main__":
    main()
