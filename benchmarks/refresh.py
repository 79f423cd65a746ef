"""Refresh benchmark: one micro-batch refresh of `--new` events on a history of 1M and 10M events.

For each history size, a child process prepares (once, cached in the work folder) a home whose
warehouse holds the simulated history (`--users`, default 50k, and 10k items), landed with `land_file` in 1M-event
Parquet files with `land_trusted`, which marks them `passed` (the quality suite is the Dagster
asset's job, not measured here). A copy of that warehouse then goes through three steps, each in a fresh child process (as a
refresh run is), each reporting its wall time and its own peak RSS:

1. initial: the refresh from scratch (it trains on the whole history). When the gate rejects its
   challenger there is no champion, and the next refresh would train from scratch again on 10k
   events; so that step 2 measures the steady state (warm start from a champion), this challenger
   is then made champion anyway, and the output says so;
2. +new: the next `--new` events are landed as one file and marked passed, then the refresh the aim
   is about runs: `stage_seconds`, wall time, rows published, the gate's decision;
3. publish: that challenger's top-K for every known user, published via `rollback` (load, verify,
   make champion, candidates, rank, explain, publish), whatever the gate decided.

TensorFlow/Keras, LightGBM and the package are imported before the timers (reported apart).
Peak RSS is the child's own VmHWM from /proc/self/status (it includes those imports).
Candidate generation is not a stage of its own in `refresh`: each child wraps
`Recommender.candidates` with a timer, so "cand s" is the part of ranker + gate + publish spent there.

Usage: python benchmarks/refresh.py [--history 1000000 10000000] [--new 10000] [--users 50000]
                                    [--workdir DIR] [--json]
(the 100k-user publish figure: --history 2000000 --users 100000)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from common import measured, peak_rss_mib, print_provenance, print_report

SEED = 0
N_ITEMS = 10_000
FILE_ROWS = 1_000_000  # events per landed history file
# Events start well in the past, so none falls after the contract's "now + 1 day" whatever the date.
SIM_START = datetime(2020, 1, 1, tzinfo=timezone.utc)
STAGES = ("features", "retrieval", "ranker", "gate", "register", "publish")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--history", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--new", type=int, default=10_000)
    parser.add_argument("--users", type=int, default=50_000, help="simulated users (10k items)")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "rec_pipeline_refresh_bench")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--child", choices=("prepare", "initial", "refresh", "publish"), help=argparse.SUPPRESS)
    parser.add_argument("--template", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--home", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--version", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# --- shared by the children -------------------------------------------------------------------


def settings(home: Path):
    from rec_pipeline.settings import Settings

    return Settings(home=home)


# --- child 1: the cached home with the history landed -----------------------------------------


def prepare(template: Path, history: int, new: int, users: int) -> dict:
    """Generate history + new events, land the history; `template/ready` marks a complete home."""
    from rec_pipeline.core.ingest.landing import land_trusted

    start = time.perf_counter()
    home = settings(template)
    home.ensure_dirs()
    files = write_files(home.imports_dir, history, new, users)
    generated = time.perf_counter()
    for path, rows in files:
        land_trusted(home.warehouse(), path, rows)
    (template / "ready").write_text(json.dumps({"history": history, "new": new}))
    return {"generate_s": generated - start, "land_s": time.perf_counter() - generated,
            "peak_rss_mib": peak_rss_mib()}


def write_files(folder: Path, history: int, new: int, users: int) -> list[tuple[Path, int]]:
    """History in FILE_ROWS-event Parquet files, then `new.parquet` with the next `new` events."""
    import polars as pl

    from rec_pipeline.core.evaluation.simulator import Simulator, SimulatorConfig
    from rec_pipeline.core.ingest.event_files import write_events

    config = SimulatorConfig(seed=SEED, n_users=users, n_items=N_ITEMS, start=SIM_START)
    files, tail, offset = [], [], 0
    for chunk in Simulator(config).iter_event_chunks(history + new, FILE_ROWS):
        head = chunk.head(max(0, history - offset))
        if head.height:
            files.append((write_events(head, folder / f"history-{len(files):03d}.parquet"), head.height))
        tail.append(chunk.slice(head.height))
        offset += chunk.height
    write_events(pl.concat(tail), new_file(folder.parent))
    return files


def new_file(template: Path) -> Path:
    return template / "new.parquet"  # outside imports/, landed only by the measured run


# --- children 2-4: one fresh process per measured step --------------------------------------


def run_step(step: str, template: Path, home_dir: Path, new: int, version: str | None) -> dict:
    """Imports first (timed apart), then the step; peak RSS covers the imports and this step only."""
    from rec_pipeline.core.ingest.landing import land_trusted
    from rec_pipeline.core.model.recommender import Recommender
    from rec_pipeline.core.model.registry import ModelRegistry

    import_s = warm_imports()
    home, calls = settings(home_dir), time_candidates(Recommender)
    registry = ModelRegistry(home.models_dir)
    if step == "initial":
        result = timed_refresh(home, registry) | ensure_champion(home, registry)
    elif step == "refresh":
        land_trusted(home.warehouse(), new_file(template), new)
        result = timed_refresh(home, registry)
    else:
        result = timed_publish(home, registry, version)
    return result | {"import_s": import_s, "candidates_s": sum(s for _, s in calls), "candidate_calls": calls,
                     "peak_rss_mib": peak_rss_mib()}


def warm_imports() -> float:
    """TensorFlow/Keras and LightGBM load lazily; a fresh process pays this once, outside the timers."""
    start = time.perf_counter()
    import keras  # noqa: F401
    import lightgbm  # noqa: F401
    import tensorflow  # noqa: F401

    import rec_pipeline.core.model.refresh  # noqa: F401
    return time.perf_counter() - start


def fresh_home(template: Path, home_dir: Path) -> None:
    shutil.rmtree(home_dir, ignore_errors=True)
    home = settings(home_dir)
    home.ensure_dirs()
    shutil.copy2(template / "warehouse.duckdb", home.warehouse_path)


def ensure_champion(home, registry) -> dict:
    """The measured refresh should run the steady-state path (warm start from a champion): when the
    gate rejected the initial challenger, it is made champion anyway, and the result says so."""
    with home.warehouse().connect() as con:
        if registry.champion(con) is not None:
            return {"forced_champion": False}
        registry.make_champion(con, registry.versions(con)[0].version, "forced rollback",
                               "benchmarks/refresh.py measures the warm-start path")
    return {"forced_champion": True}


def time_candidates(recommender_class) -> list[tuple[int, float]]:
    """Wrap `Recommender.candidates` to record (users, seconds) per call; returns the record."""
    calls: list[tuple[int, float]] = []
    original = recommender_class.candidates

    def candidates(self, users, *args, **kwargs):
        start = time.perf_counter()
        result = original(self, users, *args, **kwargs)
        calls.append((len(users), time.perf_counter() - start))
        return result

    recommender_class.candidates = candidates
    return calls


def timed_refresh(home, registry) -> dict:
    from rec_pipeline.core.model.refresh import refresh

    start = time.perf_counter()
    result = refresh(home.warehouse(), registry, home.serving_path)
    return {"seconds": time.perf_counter() - start, "events": result.events, "stage_seconds": result.stage_seconds,
            "version": result.model_version, "published": result.recommendations, "promoted": result.promoted,
            "reason": result.reason}


def timed_publish(home, registry, version: str) -> dict:
    """The model's top-K for every known user, published: `rollback` to the measured refresh's
    challenger does exactly that (load, verify, make champion, rank, explain, publish)."""
    from rec_pipeline.core.model.refresh import rollback

    start = time.perf_counter()
    published = rollback(home.warehouse(), registry, home.serving_path, version)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "events": 0, "stage_seconds": {"publish": seconds}, "version": version,
            "published": published, "promoted": None, "reason": "rollback to the challenger"}


# --- the parent -------------------------------------------------------------------------------


def spawn(*args: str) -> dict:
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"child {args} failed:\n{done.stderr.strip()[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def template_for(workdir: Path, history: int, new: int, users: int) -> tuple[Path, dict | None]:
    """The cached home for this size, prepared in a child on first use (None when cached)."""
    template = workdir / f"home-h{history}-n{new}-u{users}"
    if (template / "ready").exists():
        return template, None
    shutil.rmtree(template, ignore_errors=True)
    return template, spawn("--child", "prepare", "--template", str(template),
                           "--history", str(history), "--new", str(new), "--users", str(users))


def run_size(workdir: Path, history: int, new: int, users: int) -> dict:
    start = time.perf_counter()
    template, prepared = template_for(workdir, history, new, users)
    load_1min = os.getloadavg()[0]
    home = workdir / f"run-h{history}"
    fresh_home(template, home)
    common = ("--template", str(template), "--home", str(home), "--new", str(new))
    try:
        steps = {"initial": spawn("--child", "initial", *common)}
        steps["refresh"] = spawn("--child", "refresh", *common)
        steps["publish"] = spawn("--child", "publish", *common, "--version", steps["refresh"]["version"])
    finally:
        shutil.rmtree(home, ignore_errors=True)
    return {"history": history, "new": new, "users": users, "prepared": prepared, "load_1min": load_1min,
            "wall_s": time.perf_counter() - start, **steps}


# --- output -----------------------------------------------------------------------------------


def print_table(report: dict) -> None:
    print_provenance(report)
    header = (f"{'history':>10} {'refresh':<8} {'events':>10} " + " ".join(f"{s[:8]:>8}" for s in STAGES)
              + f" {'total s':>8} {'cand s':>7} {'published':>9} {'promoted':>8} {'peak MiB':>8} {'load1':>5}")
    print(header, "-" * len(header), sep="\n")
    for r in report["results"]:
        for name, label in (("initial", "initial"), ("refresh", f"+{r['new']:,}"), ("publish", "publish")):
            print(row_line(r["history"], label, r[name], r["load_1min"]))
    for r in report["results"]:
        print(footer(r))


def row_line(history: int, label: str, run: dict, load: float) -> str:
    stages = " ".join(f"{cell(run['stage_seconds'].get(s)):>8}" for s in STAGES)
    promoted = "-" if run["promoted"] is None else str(run["promoted"])
    return (f"{history:>10,} {label:<8} {run['events']:>10,} {stages} {run['seconds']:>8.2f}"
            f" {run['candidates_s']:>7.2f} {run['published']:>9,} {promoted:>8}"
            f" {run['peak_rss_mib']:>8,.0f} {load:>5.2f}")


def cell(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.2f}"


def footer(r: dict) -> str:
    p, initial = r["prepared"], r["initial"]
    made = (f"generated in {p['generate_s']:.0f} s, landed in {p['land_s']:.0f} s (peak {p['peak_rss_mib']:,.0f} MiB)"
            if p else "cached home")
    forced = " [made champion anyway for the next step]" if initial["forced_champion"] else ""
    imports = "/".join(f"{r[step]['import_s']:.1f}" for step in ("initial", "refresh", "publish"))
    return (f"history {r['history']:,} ({r['users']:,} simulated users): {made}; size total {r['wall_s']:.0f} s; imports (untimed) {imports} s\n"
            f"  initial: {initial['reason']}{forced}\n  +{r['new']:,}: {r['refresh']['reason']}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        result = (prepare(args.template, args.history[0], args.new, args.users) if args.child == "prepare"
                  else run_step(args.child, args.template, args.home, args.new, args.version))
        print(json.dumps(result))
        return
    args.workdir.mkdir(parents=True, exist_ok=True)
    report = measured(lambda: [run_size(args.workdir, history, args.new, args.users) for history in args.history],
                      users=args.users)
    print_report(report, print_table, args.json)


if __name__ == "__main__":
    main()
