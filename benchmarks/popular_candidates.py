"""What the popular candidates cost when publishing: `RefreshConfig.popular_candidates` 50 (the
default) against 0, side by side on one champion.

A home gets `--events` simulated events (`--users` users, 2,000 items) in two batches, each
refreshed, so the champion has a ranker. Then the champion's lists for every known user are
published (`core.refresh.publish`: candidates, features, ranking, reasons, the swap) with each
setting, alternating, `--repeats` times; medians and the ratio are printed. Both runs happen in this
process, after the imports.

Usage: python benchmarks/popular_candidates.py [--events 200000] [--users 20000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from common import measured, print_provenance, print_report, scratch_home


def run(args: argparse.Namespace) -> list[dict]:
    from rec_pipeline.core.evaluation.simulator import Simulator, SimulatorConfig
    from rec_pipeline.core.ingest.event_files import write_events
    from rec_pipeline.core.ingest.landing import land_trusted
    from rec_pipeline.core.model.config import RefreshConfig
    from rec_pipeline.core.model.publish import publish
    from rec_pipeline.core.model.refresh import refresh

    simulator = Simulator(SimulatorConfig(seed=0, n_users=args.users, n_items=2_000))
    events = simulator.events(args.events)
    with tempfile.TemporaryDirectory(prefix="rec_pipeline_popular_") as base:
        settings, registry = scratch_home(Path(base), simulator.catalogue())
        half = events.height // 2
        for k, part in enumerate((events.head(half), events.tail(events.height - half))):
            land_trusted(settings.warehouse(), write_events(part, settings.imports_dir / f"part-{k}.parquet"), part.height)
            refresh(settings.warehouse(), registry, settings.serving_path)
        with settings.warehouse().connect() as con:
            champion, model = registry.load_champion(con)
            at = con.execute("SELECT max(ts) FROM events").fetchall()[0][0]
            seconds: dict[int, list[float]] = {0: [], 50: []}
            rows: dict[int, int] = {}
            for _ in range(args.repeats):
                for popular in (50, 0):
                    config = dataclasses.replace(RefreshConfig(), popular_candidates=popular)
                    start = time.perf_counter()
                    rows[popular] = publish(con, model, champion.version, at, config, datetime.now(timezone.utc))
                    seconds[popular].append(time.perf_counter() - start)
    with_popular, without = statistics.median(seconds[50]), statistics.median(seconds[0])
    return [{"users_published": rows[50] // 20, "ranker": model.ranker is not None,
             "median_s_popular_50": round(with_popular, 2), "median_s_popular_0": round(without, 2),
             "ratio": round(with_popular / without, 2), "all_s": {str(k): [round(s, 2) for s in v]
                                                                  for k, v in seconds.items()}}]


def print_table(report: dict) -> None:
    print_provenance(report)
    for key, value in report["results"][0].items():
        print(f"{key:<22} {value}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    report = measured(lambda: run(args), events=args.events, users=args.users, repeats=args.repeats)
    print_report(report, print_table, args.json)


if __name__ == "__main__":
    main()
