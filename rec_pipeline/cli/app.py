"""`rec-pipeline`: the command line over the same Definitions the Dagster UI runs. Argument parsing
and printing only: the work is done by `rec_pipeline.core` and by the jobs in `rec_pipeline.defs`."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated

import polars as pl
import typer
from rich.console import Console
from rich.table import Table

from rec_pipeline.cli.console import progress
from rec_pipeline.cli.session import ReportingGroup, settings, start
from rec_pipeline.core.errors import InputError, NotFoundError
from rec_pipeline.core.ingest.sources import (
    FORMATS,
    UnsupportedFormatError,
    detect_format,
)

app = typer.Typer(
    cls=ReportingGroup,
    help="rec_pipeline: land behaviour events, validate them and keep recommendations fresh.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
JsonFlag = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]


@app.callback()
def main(debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks and library logs "
                                                          "(also REC_PIPELINE_DEBUG=1).")] = False) -> None:
    start(debug)


# --- landing ------------------------------------------------------------------------------------


@app.command()
def simulate(
    out: Annotated[Path, typer.Option(help="Folder to write event files into.")],
    events: Annotated[int, typer.Option(min=1, help="Number of events.")] = 10_000,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same events.")] = 0,
    events_per_file: Annotated[int, typer.Option(min=1)] = 10_000,
    file_format: Annotated[str, typer.Option("--format", help="jsonl, jsonl.gz, csv, csv.gz or parquet.")] = "jsonl",
) -> None:
    """Write simulated behaviour events into OUT."""
    from rec_pipeline.core.evaluation.simulator import Simulator, SimulatorConfig

    paths = Simulator(SimulatorConfig(seed=seed)).write_event_files(out, events, events_per_file, file_format)
    Console(stderr=True).print(f"wrote {events} events in {len(paths)} file(s) to {out}")


@app.command()
def ingest(paths: Annotated[list[Path], typer.Argument(help="Event files or folders of them.")],
           as_json: JsonFlag = False) -> None:
    """Land event files through the landing job, in-process; folders are searched for event files."""
    summary = report_landing(land_files(expand_event_files(paths), as_json), as_json)
    if summary["failed"]:
        print(f"rec-pipeline: {summary['failed']} file(s) could not be read (see ingested_files)", file=sys.stderr)
        raise typer.Exit(1)


@app.command()
def run(
    events: Annotated[int, typer.Option(min=1, help="Simulated events to add.")] = 20_000,
    seed: Annotated[int, typer.Option(help="Simulator seed.")] = 0,
    events_per_file: Annotated[int, typer.Option(min=1)] = 5_000,
    as_json: JsonFlag = False,
) -> None:
    """The main job on the embedded default: simulate the next EVENTS events of the seed's stream into
    $REC_PIPELINE_HOME/imports, land and validate each file through the landing job, print what
    landed. (The landing folder is left to the sensor, so a running `dagster dev` never races it.)"""
    stream = _simulated_stream(seed)
    with settings().warehouse().connect() as con:
        start = stream.position(con)
    files = stream.write_files(settings().imports_dir, start, events, events_per_file)
    with _imports_discarded_when_pseudonymized(files):
        report_landing(land_files(files, as_json), as_json)
    with settings().warehouse().connect() as con:
        stream.advance(con, start + events)


@app.command()
def movielens(
    path: Annotated[Path, typer.Argument(help="A MovieLens folder (ml-100k, ml-latest/25m/32m or RecBole files).")],
    as_json: JsonFlag = False,
) -> None:
    """Land a MovieLens copy: ratings become `rating` events, movies become catalogue items."""
    from rec_pipeline.core.evaluation.movielens import load_movielens
    from rec_pipeline.core.ingest.catalogue import upsert_items
    from rec_pipeline.core.ingest.event_files import write_events

    data = load_movielens(path)
    settings().ensure_dirs()
    events_file = write_events(data.events, settings().imports_dir / f"movielens-{data.layout}.parquet")
    with settings().warehouse().connect() as con:
        upsert_items(con, data.items)
    with _imports_discarded_when_pseudonymized([events_file]):
        report_landing(land_files([events_file], as_json), as_json)


@app.command()
def release(batch_id: str) -> None:
    """Let a held-back batch's events reach training after all."""
    _decide(batch_id, "released")


@app.command()
def drop(batch_id: str) -> None:
    """Keep a batch's events out of training for good (they stay in `events` for inspection)."""
    _decide(batch_id, "dropped")


def _decide(batch_id: str, decision: str) -> None:
    from rec_pipeline.core.ingest.batches import set_operator_decision

    with settings().warehouse().connect() as con:
        set_operator_decision(con, batch_id, decision)
    Console(stderr=True).print(f"{batch_id}: {decision}")


# --- looking ------------------------------------------------------------------------------------


@app.command()
def status(as_json: JsonFlag = False) -> None:
    """Counts of events, rejected rows, users, items and batches in the warehouse; the age of the
    published recommendations and the last failed run."""
    from rec_pipeline.core.ops.operations import health
    from rec_pipeline.core.ops.status import warehouse_status

    with settings().warehouse().connect() as con:
        counts = warehouse_status(con) | health(con, datetime.now(timezone.utc))
    _print_records([{"metric": key, "value": value} for key, value in counts.items()], "rec_pipeline status",
                   counts if as_json else None)


@app.command()
def batches(as_json: JsonFlag = False, limit: Annotated[int, typer.Option(min=1)] = 20) -> None:
    """The latest batches with their landing counts, quality status and failed checks."""
    from rec_pipeline.core.ingest.batches import batch_overview

    with settings().warehouse().connect() as con:
        records = batch_overview(con, limit)
    _print_records(records, "batches", records if as_json else None)


@app.command()
def models(as_json: JsonFlag = False) -> None:
    """The model registry, newest first: status, the gate's verdict, and who made it champion when."""
    from rec_pipeline.core.model.registry import ModelRegistry

    registry = ModelRegistry(settings().models_dir)
    with settings().warehouse().connect() as con:
        records = [{"version": m.version, "status": m.status, "parent": m.parent,
                    "trained_at": m.trained_at.isoformat(), "gate": _verdict(registry.gate_verdict(con, m.version)),
                    "champion_history": registry.champion_history(con, m.version), "metrics": m.metrics}
                   for m in registry.versions(con)]
    rows = [{"version": m["version"], "status": m["status"], "gate": m["gate"],
             "made champion by": ", ".join(h["promoted_by"] for h in m["champion_history"]),
             "trained_at": m["trained_at"],
             **{f"{who} ndcg": f"{m['metrics'].get(f'{who}_ndcg', float('nan')):.4f}"
                for who in ("challenger", "champion", "floor")}} for m in records]
    _print_records(rows, "models", records if as_json else None)


def _verdict(verdict: tuple[bool, str] | None) -> str:
    return "not judged" if verdict is None else ("promoted" if verdict[0] else "rejected")


@app.command()
def recommend(
    user_id: str,
    k: Annotated[int, typer.Option("-k", min=1, help="How many items.")] = 10,
    as_json: JsonFlag = False,
) -> None:
    """A user's recommendations, read from serving.duckdb (never blocked by a running pipeline);
    an unknown user gets the trending list, marked as the fallback. Takes the raw id also when user
    ids are pseudonymized (it is hashed with the same key)."""
    from rec_pipeline.core.model.serving import recommendations_for

    pseudonymizer = settings().pseudonymizer()
    stored_id = pseudonymizer(user_id) if pseudonymizer else user_id
    items = [item.as_dict() for item in recommendations_for(settings().serving_path, stored_id, k)]
    fallback = " (fallback)" if items and items[0]["fallback"] else ""
    rows = [{"rank": i["rank"], "item_id": i["item_id"], "score": f"{i['score']:.4f}", "model": i["model_version"],
             "reason": i["reason"]} for i in items]
    _print_records(rows, f"{user_id}{fallback}", items if as_json else None)


# --- learning -----------------------------------------------------------------------------------


@app.command()
def refresh(as_json: JsonFlag = False) -> None:
    """One micro-batch refresh (features, challenger, gate, champion, recommendations), in-process
    through the refresh job."""
    outcome = _refresh_through_dagster()
    print(json.dumps(outcome) if as_json else outcome)


@app.command()
def rollback(version: str, force: Annotated[bool, typer.Option(help="Also a version the gate rejected.")] = False,
             ) -> None:
    """Make an earlier model version the champion again and republish its recommendations."""
    from rec_pipeline.core.model.refresh import rollback as rollback_to
    from rec_pipeline.core.model.registry import ModelRegistry

    published = rollback_to(settings().warehouse(), ModelRegistry(settings().models_dir), settings().serving_path,
                            version, force=force)
    Console(stderr=True).print(f"{version} is the champion; {published} recommendations published")


@app.command()
def forget(user_id: str, as_json: JsonFlag = False) -> None:
    """Remove a user from everything the pipeline holds (events, rejected rows, features, embedding
    rows in every model, recommendations, check metadata), republish, and audit it without the id."""
    from rec_pipeline.core.model.registry import ModelRegistry
    from rec_pipeline.core.ops.forgetting import forget as forget_user

    report = forget_user(settings().warehouse(), ModelRegistry(settings().models_dir), settings().serving_path,
                         user_id, settings().pseudonymizer(),
                         input_folders=(settings().imports_dir, settings().archive_dir)).as_dict()
    request = report.pop("request_id")
    rows = [{"removed from": place.replace("_", " "), "rows": count} for place, count in report.items()]
    _print_records(rows, f"forgotten (audit request {request})", report | {"request_id": request} if as_json else None)


@app.command()
def demo(
    batches: Annotated[int, typer.Option(min=1, help="Micro-batches to simulate, land and learn from.")] = 8,
    events_per_batch: Annotated[int, typer.Option(min=100)] = 5_000,
    seed: Annotated[int, typer.Option(help="Simulator seed.")] = 0,
    as_json: JsonFlag = False,
) -> None:
    """The online loop, batch by batch: measure the champion, the popularity floor and the
    simulator's oracle on a simulated batch before learning from it, then land it through the
    landing job and refresh through the refresh job."""
    from rec_pipeline.core.evaluation.demo import run_demo
    from rec_pipeline.core.evaluation.policies import OnlinePipeline, PipelineHome
    from rec_pipeline.core.ingest.event_files import write_events
    from rec_pipeline.core.model.registry import ModelRegistry

    stream = _simulated_stream(seed)
    home = PipelineHome(settings().warehouse(), ModelRegistry(settings().models_dir), settings().serving_path,
                        settings().imports_dir)
    with home.warehouse.connect() as con:
        start = stream.position(con)

    def land_and_refresh(batch: pl.DataFrame) -> dict:
        path = write_events(batch, settings().imports_dir / f"sim-s{seed}-{batch['event_id'][0]}.jsonl")
        with _imports_discarded_when_pseudonymized([path]):
            landed = summarize(land_files([path], as_json=True))
        with home.warehouse.connect() as con:
            stream.advance(con, start + pipeline.learnt * events_per_batch + batch.height)
        return {"landed": landed["landed"], "rejected": landed["rejected"], **_refresh_through_dagster()}

    pipeline = OnlinePipeline(home, learn_batch=land_and_refresh)
    lines = []

    def after_batch(number: int, scored: list[dict]) -> None:
        line = _demo_line(number, scored, pipeline)
        lines.append(line)
        tracker.advance()
        if not as_json:
            tracker.print(_format_demo_line(line))

    with progress("demo", batches, as_json) as tracker:
        run_demo(pipeline, stream, start, batches, events_per_batch, home.validated_pairs(), after_batch)
    if as_json:
        print(json.dumps(lines))
        return
    print(f"Query the results: rec-pipeline recommend USER, or open {settings().serving_path} read-only\n"
          "  (SELECT * FROM recommendations_for('u000001')); rec-pipeline models lists the registry.")


def _demo_line(number: int, scored: list[dict], pipeline) -> dict:
    ndcg = {row["policy"]: row["ndcg"] for row in scored}
    learnt = pipeline.last_refresh
    return {"batch": number, "landed": learnt["landed"], "rejected": learnt["rejected"],
            "users": scored[0]["users"] if scored else 0,
            "champion_ndcg": ndcg["champion"] if pipeline.ranked_with else None,
            "popularity_ndcg": ndcg["popularity"], "oracle_ndcg": ndcg["oracle"],
            "model_version": learnt["model_version"], "promoted": learnt["promoted"]}


def _format_demo_line(row: dict) -> str:
    def fmt(value):
        return "  n/a " if value is None else f"{value:.4f}"

    return (f"batch {row['batch']:>3}: landed {row['landed']:>6}, rejected {row['rejected']:>3}; NDCG@10 before "
            f"learning it: champion {fmt(row['champion_ndcg'])}, popularity {fmt(row['popularity_ndcg'])}, "
            f"oracle {fmt(row['oracle_ndcg'])}; {row['model_version'] or '-'} "
            f"{'promoted' if row['promoted'] else 'not promoted'}")


@app.command()
def replay(
    data: Annotated[Path, typer.Option(help="An event file, or a MovieLens folder in any supported layout.")],
    batches: Annotated[int, typer.Option(min=1)] = 20,
    warmup: Annotated[float, typer.Option(min=0.01, max=0.99, help="Share of events used as history.")] = 0.5,
    k: Annotated[int, typer.Option("-k", min=1)] = 10,
    policies: Annotated[str, typer.Option(help="Comma-separated, from: online, static, full_retrain, "
                                                "popularity, recent_popularity, ials.")] = "online,static,full_retrain,"
                                                                                    "popularity,recent_popularity,ials",
    out: Annotated[Path | None, typer.Option(help="Write per_batch.csv, ndcg.png and results.md here.")] = None,
    ungated: Annotated[bool, typer.Option(help="Diagnostic: no popularity floor and a 99% tolerance, so nearly "
                                               "every challenger is promoted (what the models learn, gate aside).")]
    = False,
    as_json: JsonFlag = False,
) -> None:
    """Replay a historical log through the online loop, test-then-train, against the baselines, on
    identical batches (the evaluation protocol of ../shared/DESIGN.md), in temporary homes."""
    import tempfile

    from rec_pipeline.core.evaluation.replay import ReplayConfig, load_log, write_report
    from rec_pipeline.core.evaluation.replay import replay as run_replay
    from rec_pipeline.core.model.config import RefreshConfig
    from rec_pipeline.core.model.gate import GatePolicy

    if not data.exists():
        raise NotFoundError(f"{data} does not exist")
    gate = GatePolicy(tolerance=0.99, require_above_floor=False, min_users=1) if ungated else GatePolicy()
    config = ReplayConfig(batches=batches, warmup=warmup, k=k, policies=tuple(p.strip() for p in policies.split(",")),
                          refresh=RefreshConfig(gate=gate))

    with progress("replay", batches, as_json) as tracker, \
            tempfile.TemporaryDirectory(prefix="rec_pipeline_replay_") as workdir:
        def after_batch(number: int, scored: list[dict]) -> None:
            tracker.advance()
            if not as_json:
                scores = ", ".join(f"{row['policy']} {row['ndcg']:.4f}" for row in scored)
                tracker.print(f"batch {number:>3}/{batches}: NDCG@{k} {scores}")

        events, items = load_log(data, Path(workdir))
        result = run_replay(events, items, Path(workdir), config, after_batch)
    if out is not None:
        write_report(result, out)
    summary = {key: result[key] for key in ("events", "batches", "policies")}
    rows = [{"policy": name, f"Recall@{k}": f"{m[f'recall@{k}']:.4f}", f"NDCG@{k}": f"{m[f'ndcg@{k}']:.4f}",
             "coverage": f"{m['coverage']:.4f}", "train s": f"{m['train_seconds']:.1f}"}
            for name, m in result["policies"].items()]
    _print_records(rows, f"replay of {data}", summary if as_json else None)


# --- shared -------------------------------------------------------------------------------------


def _simulated_stream(seed: int):
    from rec_pipeline.core.evaluation.demo import SimulatedStream
    from rec_pipeline.core.evaluation.simulator import Simulator, SimulatorConfig
    from rec_pipeline.core.ingest.catalogue import upsert_items

    simulator = Simulator(SimulatorConfig(seed=seed))
    settings().ensure_dirs()
    with settings().warehouse().connect() as con:
        upsert_items(con, simulator.catalogue())
    return SimulatedStream(simulator)


def _refresh_through_dagster() -> dict:
    from rec_pipeline.cli.runs import dagster_instance, run_refresh
    from rec_pipeline.definitions import build_definitions

    with dagster_instance(settings()) as instance:
        return run_refresh(build_definitions(settings()), instance, settings())


def expand_event_files(paths: list[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.iterdir() if p.is_file() and _is_event_file(p)))
        elif path.is_file():
            detect_format(path)
            files.append(path)
        else:
            raise NotFoundError(f"{path}: no such file or folder")
    if not files:
        raise InputError(f"no event files ({', '.join(sorted(FORMATS))}) in {', '.join(map(str, paths))}")
    return files


def _is_event_file(path: Path) -> bool:
    try:
        detect_format(path)
    except UnsupportedFormatError:
        return False
    return not path.name.startswith(".")


@contextmanager
def _imports_discarded_when_pseudonymized(files: list[Path]) -> Iterator[None]:
    """The command line's own event files hold raw ids: with a key they go once landed (or refused)."""
    from rec_pipeline.core.ops.pseudonymization import discard_imports

    try:
        yield
    finally:
        discard_imports(files, settings().pseudonymizer())


def land_files(files: list[Path], as_json: bool):
    from rec_pipeline.cli.runs import dagster_instance, land_through_dagster
    from rec_pipeline.core.ops.pseudonymization import verify_key
    from rec_pipeline.definitions import build_definitions

    with settings().warehouse().connect() as con:  # a missing or wrong key: one line, before any file
        verify_key(con, settings().pseudonymizer())
    definitions = build_definitions(settings())
    runs = []
    with dagster_instance(settings()) as instance, progress("landing", len(files), as_json or len(files) < 2) as tracker:
        for path in files:
            tracker.describe(f"landing {path.name}")
            runs.append(land_through_dagster(definitions, instance, path))
            tracker.advance()
    return runs


def summarize(runs) -> dict:
    reports = [run.report for run in runs]
    return {
        "files": len(reports),
        "read": sum(r.read for r in reports),
        "landed": sum(r.landed for r in reports),
        "duplicates": sum(r.duplicates for r in reports),
        "rejected": sum(r.rejected for r in reports),
        "failed": sum(r.status == "failed" for r in reports),
        "held_back": sum(run.quality_status == "failed" for run in runs),
        "batches": [run.report.as_dict() | {"quality_status": run.quality_status} for run in runs],
    }


def report_landing(runs, as_json: bool) -> dict:
    summary = summarize(runs)
    rows = [{"file": Path(r.report.path).name, "batch": r.report.batch_id, "status": r.report.reason or r.report.status,
             "quality": r.quality_status, "read": r.report.read, "landed": r.report.landed,
             "duplicates": r.report.duplicates, "rejected": r.report.rejected} for r in runs]
    _print_records(rows, "landed", summary if as_json else None)
    if not as_json:
        print(f"{summary['files']} file(s): read {summary['read']} = landed {summary['landed']} + duplicates "
              f"{summary['duplicates']} + rejected {summary['rejected']}; {summary['failed']} unreadable, "
              f"{summary['held_back']} held back by quality checks")
    return summary


def _print_records(rows: Iterable[dict], title: str, as_json: object | None) -> None:
    """`as_json` (when given) as one JSON document on stdout, else `rows` as a table."""
    if as_json is not None:
        print(json.dumps(as_json, default=str))
        return
    rows = list(rows)
    table = Table(*(rows[0] if rows else ()), title=title)
    for row in rows:
        table.add_row(*(str(value) for value in row.values()))
    Console().print(table)

