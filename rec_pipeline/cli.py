"""`rec-pipeline`: the command line over the same Definitions the Dagster UI runs."""

import functools
import json
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

import duckdb

from rec_pipeline.config import Settings
from rec_pipeline.core.ingest.sources import FORMATS, UnsupportedFormatError, detect_format
from rec_pipeline.core.ops.warehouse import WarehouseLockedError

app = typer.Typer(
    help="rec_pipeline: land behaviour events, validate them and keep recommendations fresh.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console(stderr=True)
JsonFlag = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]


class UsageError(Exception):
    """Bad input from the user: reported in one line, exit status 1."""


def one_line_errors(command):
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except KeyError as error:  # an unknown batch or model version
            print(f"rec-pipeline: {error.args[0]}", file=sys.stderr)
            raise typer.Exit(1) from None
        except (UsageError, OSError, ValueError, WarehouseLockedError, duckdb.Error) as error:
            print(f"rec-pipeline: {error}", file=sys.stderr)
            raise typer.Exit(1) from None

    return wrapper


@app.command()
@one_line_errors
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
    console.print(f"wrote {events} events in {len(paths)} file(s) to {out}")


@app.command()
@one_line_errors
def ingest(paths: Annotated[list[Path], typer.Argument(help="Event files or folders of them.")], as_json: JsonFlag = False) -> None:
    """Land event files through the landing job, in-process; folders are searched for event files."""
    summary = report_landing(land_files(expand_event_files(paths)), as_json)
    if summary["failed"]:
        print(f"rec-pipeline: {summary['failed']} file(s) could not be read (see ingested_files)", file=sys.stderr)
        raise typer.Exit(1)


@app.command()
@one_line_errors
def status(as_json: JsonFlag = False) -> None:
    """Counts of events, rejected rows, users, items and batches in the warehouse; the age of the
    published recommendations and the last failed run."""
    from rec_pipeline.core.ops.operations import health
    from rec_pipeline.core.ops.status import warehouse_status

    with Settings.from_env().warehouse().connect() as con:
        counts = warehouse_status(con) | health(con, datetime.now(timezone.utc))
    if as_json:
        print(json.dumps(counts))
        return
    table = Table("metric", "value", title="rec_pipeline status")
    for key, value in counts.items():
        table.add_row(key, str(value))
    Console().print(table)


@app.command()
@one_line_errors
def batches(as_json: JsonFlag = False, limit: Annotated[int, typer.Option(min=1)] = 20) -> None:
    """The latest batches with their landing counts, quality status and failed checks."""

    with Settings.from_env().warehouse().connect() as con:
        rows = con.execute("SELECT * FROM batch_overview ORDER BY landed_at DESC LIMIT ?", [limit])
        names = [column[0] for column in rows.description]
        records = [dict(zip(names, row)) for row in rows.fetchall()]
    if as_json:
        print(json.dumps(records, default=str))
        return
    table = Table(*names, title="batches")
    for record in records:
        table.add_row(*(str(value) for value in record.values()))
    Console().print(table)


@app.command()
@one_line_errors
def release(batch_id: str) -> None:
    """Let a held-back batch's events reach training after all."""
    _decide(batch_id, "released")


@app.command()
@one_line_errors
def drop(batch_id: str) -> None:
    """Keep a batch's events out of training for good (they stay in `events` for inspection)."""
    _decide(batch_id, "dropped")


def _decide(batch_id: str, decision: str) -> None:
    from rec_pipeline.core.ingest.batches import set_operator_decision

    with Settings.from_env().warehouse().connect() as con:
        set_operator_decision(con, batch_id, decision)
    console.print(f"{batch_id}: {decision}")


@app.command()
@one_line_errors
def movielens(
    path: Annotated[Path, typer.Argument(help="A MovieLens folder (ml-100k, ml-latest/25m/32m or RecBole files).")],
    as_json: JsonFlag = False,
) -> None:
    """Land a MovieLens copy: ratings become `rating` events, movies become catalogue items."""
    from rec_pipeline.core.ingest.catalogue import upsert_items
    from rec_pipeline.core.ingest.event_files import write_events
    from rec_pipeline.core.evaluation.movielens import load_movielens

    settings = Settings.from_env()
    data = load_movielens(path)
    events_file = write_events(data.events, settings.imports_dir / f"movielens-{data.layout}.parquet")
    with settings.warehouse().connect() as con:
        upsert_items(con, data.items)
    report_landing(land_files([events_file]), as_json)


@app.command()
@one_line_errors
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
    identical batches (DESIGN.md's protocol), in temporary homes."""
    import tempfile

    from rec_pipeline.core.model.gate import GatePolicy
    from rec_pipeline.core.model.refresh import RefreshConfig
    from rec_pipeline.core.evaluation.replay import ReplayConfig, load_log, write_report
    from rec_pipeline.core.evaluation.replay import replay as run_replay

    if not data.exists():
        raise UsageError(f"{data} does not exist")
    gate = GatePolicy(tolerance=0.99, require_above_floor=False, min_users=1) if ungated else GatePolicy()
    config = ReplayConfig(batches=batches, warmup=warmup, k=k, policies=tuple(p.strip() for p in policies.split(",")),
                          refresh=RefreshConfig(gate=gate))

    def progress(number: int, ndcg: dict) -> None:
        if not as_json:
            scores = ", ".join(f"{name} {value:.4f}" for name, value in ndcg.items())
            print(f"batch {number:>3}/{batches}: NDCG@{k} {scores}", flush=True)

    with tempfile.TemporaryDirectory(prefix="rec_pipeline_replay_") as workdir:
        events, items = load_log(data, Path(workdir))
        result = run_replay(events, items, Path(workdir), config, progress)
    if out is not None:
        write_report(result, out)
    summary = {key: result[key] for key in ("events", "batches", "policies")}
    if as_json:
        print(json.dumps(summary))
        return
    table = Table("policy", f"Recall@{k}", f"NDCG@{k}", "coverage", "train s", title=f"replay of {data}")
    for name, metrics in result["policies"].items():
        table.add_row(name, *(f"{metrics[key]:.4f}" for key in (f"recall@{k}", f"ndcg@{k}", "coverage")),
                      f"{metrics['train_seconds']:.1f}")
    Console().print(table)


@app.command()
@one_line_errors
def refresh(as_json: JsonFlag = False) -> None:
    """One micro-batch refresh (features, challenger, gate, champion, recommendations), in-process
    through the refresh job."""
    outcome = _run_refresh()
    print(json.dumps(outcome) if as_json else outcome)


def _run_refresh() -> dict:
    from rec_pipeline.definitions import load_definitions
    from rec_pipeline.defs.ingest.runner import dagster_instance

    with dagster_instance() as instance:
        result = load_definitions().resolve_job_def("refresh_job").execute_in_process(
            instance=instance, raise_on_error=False,
            run_config={"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}},
        )
    if not result.success:
        raise UsageError("the refresh run failed; see the Dagster run log")
    return _refresh_outcome(result.asset_materializations_for_node("model_refresh"))


def _refresh_outcome(materializations) -> dict:
    values = {m.asset_key.to_user_string(): {k: v.value for k, v in m.metadata.items()} for m in materializations}
    challenger = values.get("challenger_model", {})
    return {
        "model_version": challenger.get("model_version"),
        "promoted": bool(challenger.get("promoted", False)),
        "reason": challenger.get("reason", "no new validated events"),
        "recommendations": int(values.get("recommendations", {}).get("dagster/row_count", 0)),
        "gate": {k.removeprefix("gate/"): v for k, v in challenger.items() if k.startswith("gate/")},
    }


@app.command()
@one_line_errors
def recommend(
    user_id: str,
    k: Annotated[int, typer.Option("-k", min=1, help="How many items.")] = 10,
    as_json: JsonFlag = False,
) -> None:
    """A user's recommendations, read from serving.duckdb (never blocked by a running pipeline);
    an unknown user gets the trending list, marked as the fallback. Takes the raw id also when user
    ids are pseudonymized (it is hashed with the same key)."""
    from rec_pipeline.core.ops.pseudonymization import Pseudonymizer

    settings = Settings.from_env()
    if not settings.serving_path.exists():
        raise UsageError(f"nothing published yet at {settings.serving_path}: run `rec-pipeline refresh`")
    pseudonymizer = Pseudonymizer.from_env()
    stored_id = pseudonymizer(user_id) if pseudonymizer else user_id
    with duckdb.connect(str(settings.serving_path), read_only=True) as con:
        rows = con.execute("SELECT item_id, rank, score, model_version, reason FROM recommendations_for(?)"
                           " WHERE rank <= ?", [stored_id, k]).fetchall()
        fallback = not rows
        if fallback:
            rows = con.execute("SELECT item_id, rank, score, 'fallback', 'trending now' FROM trending_items"
                               " WHERE rank <= ? ORDER BY rank", [k]).fetchall()
    items = [dict(zip(("item_id", "rank", "score", "model_version", "reason"), row)) | {"fallback": fallback}
             for row in rows]
    if as_json:
        print(json.dumps(items))
        return
    table = Table("rank", "item_id", "score", "model", "reason", title=f"{user_id}{' (fallback)' if fallback else ''}")
    for item in items:
        table.add_row(str(item["rank"]), item["item_id"], f"{item['score']:.4f}", item["model_version"], item["reason"])
    Console().print(table)


@app.command()
@one_line_errors
def models(as_json: JsonFlag = False) -> None:
    """The model registry, newest first."""
    from rec_pipeline.core.model.registry import ModelRegistry

    settings = Settings.from_env()
    with settings.warehouse().connect() as con:
        versions = ModelRegistry(settings.models_dir).versions(con)
    records = [{"version": m.version, "status": m.status, "parent": m.parent, "trained_at": m.trained_at.isoformat(),
                "metrics": m.metrics} for m in versions]
    if as_json:
        print(json.dumps(records))
        return
    table = Table("version", "status", "parent", "trained_at", "challenger ndcg", "champion ndcg", "floor ndcg")
    for m in records:
        table.add_row(m["version"], m["status"], m["parent"] or "", m["trained_at"],
                      *(f"{m['metrics'].get(f'{who}_ndcg', float('nan')):.4f}" for who in ("challenger", "champion", "floor")))
    Console().print(table)


@app.command()
@one_line_errors
def rollback(version: str) -> None:
    """Make an earlier model version the champion again and republish its recommendations."""
    from rec_pipeline.core.model.refresh import rollback as rollback_to
    from rec_pipeline.core.model.registry import ModelRegistry

    settings = Settings.from_env()
    published = rollback_to(settings.warehouse(), ModelRegistry(settings.models_dir), settings.serving_path, version)
    console.print(f"{version} is the champion; {published} recommendations published")


@app.command()
@one_line_errors
def forget(user_id: str, as_json: JsonFlag = False) -> None:
    """Remove a user from everything the pipeline holds (events, rejected rows, features, embedding
    rows in every model, recommendations, check metadata), republish, and audit it without the id."""
    from rec_pipeline.core.ops.forgetting import forget as forget_user
    from rec_pipeline.core.ops.pseudonymization import Pseudonymizer
    from rec_pipeline.core.model.registry import ModelRegistry

    settings = Settings.from_env()
    report = forget_user(settings.warehouse(), ModelRegistry(settings.models_dir), settings.serving_path, user_id,
                         Pseudonymizer.from_env()).as_dict()
    if as_json:
        print(json.dumps(report))
        return
    table = Table("removed from", "rows", title=f"forgotten (audit request {report.pop('request_id')})")
    for place, count in report.items():
        table.add_row(place.replace("_", " "), str(count))
    console.print(table)


@app.command()
@one_line_errors
def demo(
    batches: Annotated[int, typer.Option(min=1, help="Micro-batches to simulate, land and learn from.")] = 8,
    events_per_batch: Annotated[int, typer.Option(min=100)] = 5_000,
    seed: Annotated[int, typer.Option(help="Simulator seed.")] = 0,
    as_json: JsonFlag = False,
) -> None:
    """The online loop, batch by batch: simulate, land and validate, measure the champion, the
    popularity floor and the simulator's oracle on the batch before learning from it, refresh."""
    from rec_pipeline.core.evaluation.demo import batch_ndcg
    from rec_pipeline.core.model.recommender import Recommender
    from rec_pipeline.core.model.registry import ModelRegistry
    from rec_pipeline.core.evaluation.simulator import Simulator, SimulatorConfig

    settings = Settings.from_env()
    settings.ensure_dirs()
    simulator = Simulator(SimulatorConfig(seed=seed))
    registry = ModelRegistry(settings.models_dir)
    _upsert_catalogue(settings, simulator)
    rows = []
    for batch in range(1, batches + 1):
        offset = _simulated_so_far(settings, seed)
        files = _write_simulated_files(simulator, settings.imports_dir, seed, offset, events_per_batch, events_per_batch)
        landed = summarize(land_files(files))
        with settings.warehouse().connect() as con:
            champion = registry.champion(con)
            model = Recommender.load(registry.verified_artifact(con, champion.version)) if champion else None
            new = con.sql("SELECT * FROM events_validated ANTI JOIN refresh_batches USING (batch_id)").pl()
            scores = batch_ndcg(con, {"champion": model}, simulator, new) if new.height else {}
        outcome = _run_refresh()
        rows.append({"batch": batch, "landed": landed["landed"], "rejected": landed["rejected"],
                     "model_version": outcome["model_version"], "promoted": outcome["promoted"], **scores})
        if not as_json:
            print(_demo_line(rows[-1]), flush=True)
    if as_json:
        print(json.dumps(rows))
        return
    print(f"Query the results: rec-pipeline recommend USER, or open {settings.serving_path} read-only\n"
          "  (SELECT * FROM recommendations_for('u000001')); rec-pipeline models lists the registry.")


def _demo_line(row: dict) -> str:
    def fmt(value):
        return "  n/a " if value is None else f"{value:.4f}"

    return (f"batch {row['batch']:>3}: landed {row['landed']:>6}, rejected {row['rejected']:>3}; NDCG@10 before "
            f"learning it: champion {fmt(row.get('champion_ndcg'))}, popularity {fmt(row.get('popularity_ndcg'))}, "
            f"oracle {fmt(row.get('oracle_ndcg'))}; {row['model_version'] or '-'} "
            f"{'promoted' if row['promoted'] else 'not promoted'}")


@app.command()
@one_line_errors
def run(
    events: Annotated[int, typer.Option(min=1, help="Simulated events to add.")] = 20_000,
    seed: Annotated[int, typer.Option(help="Simulator seed.")] = 0,
    events_per_file: Annotated[int, typer.Option(min=1)] = 5_000,
    as_json: JsonFlag = False,
) -> None:
    """The main job on the embedded default: simulate the next EVENTS events of the seed's stream into
    $REC_PIPELINE_HOME/imports, land and validate each file through the landing job, print what
    landed. (The landing folder is left to the sensor, so a running `dagster dev` never races it.)"""
    from rec_pipeline.core.evaluation.simulator import Simulator, SimulatorConfig

    settings = Settings.from_env()
    settings.ensure_dirs()
    simulator = Simulator(SimulatorConfig(seed=seed))
    offset = _simulated_so_far(settings, seed)
    files = _write_simulated_files(simulator, settings.imports_dir, seed, offset, events, events_per_file)
    _upsert_catalogue(settings, simulator)
    report_landing(land_files(files), as_json)


def _simulated_so_far(settings: Settings, seed: int) -> int:
    with settings.warehouse().connect() as con:
        return con.execute(
            "SELECT (SELECT count(*) FROM events WHERE starts_with(event_id, $p))"
            " + (SELECT count(*) FROM events_rejected WHERE starts_with(event_id, $p))",
            {"p": f"sim{seed}-"},
        ).fetchone()[0]


def _write_simulated_files(simulator, folder: Path, seed: int, offset: int, events: int, per_file: int) -> list[Path]:
    from rec_pipeline.core.ingest.event_files import write_events

    new_events = simulator.events(offset + events).slice(offset)
    return [
        write_events(new_events.slice(start, per_file), folder / f"sim-s{seed}-e{offset + start:010d}.jsonl")
        for start in range(0, events, per_file)
    ]


def _upsert_catalogue(settings: Settings, simulator) -> None:
    from rec_pipeline.core.ingest.catalogue import upsert_items

    with settings.warehouse().connect() as con:
        upsert_items(con, simulator.catalogue())


def expand_event_files(paths: list[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.iterdir() if p.is_file() and _is_event_file(p)))
        elif path.is_file():
            detect_format(path)
            files.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such file or folder")
    if not files:
        raise UsageError(f"no event files ({', '.join(sorted(FORMATS))}) in {', '.join(map(str, paths))}")
    return files


def _is_event_file(path: Path) -> bool:
    try:
        detect_format(path)
    except UnsupportedFormatError:
        return False
    return not path.name.startswith(".")


def land_files(files: list[Path]):
    from rec_pipeline.definitions import load_definitions
    from rec_pipeline.defs.ingest.runner import dagster_instance, land_through_dagster

    definitions = load_definitions()
    runs = []
    with dagster_instance() as instance, _progress() as progress:
        task = progress.add_task("landing", total=len(files))
        for path in files:
            progress.update(task, description=f"landing {path.name}")
            runs.append(land_through_dagster(definitions, instance, path))
            progress.advance(task)
    return runs


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console, transient=True,
    )


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
    if as_json:
        print(json.dumps(summary))
    else:
        print_landing_table(runs, summary)
    return summary


def print_landing_table(runs, summary: dict) -> None:
    table = Table("file", "batch", "status", "quality", "read", "landed", "duplicates", "rejected", title="landed")
    for run in runs:
        r = run.report
        table.add_row(Path(r.path).name, r.batch_id, r.reason or r.status, run.quality_status,
                      *(str(n) for n in (r.read, r.landed, r.duplicates, r.rejected)))
    Console().print(table)
    Console().print(
        f"{summary['files']} file(s): read {summary['read']} = landed {summary['landed']} + duplicates "
        f"{summary['duplicates']} + rejected {summary['rejected']}; {summary['failed']} unreadable, "
        f"{summary['held_back']} held back by quality checks"
    )
