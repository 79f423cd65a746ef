"""Drift experiment: the online loop against a model frozen after warm-up, on the simulator's
drifting tastes, measured test-then-train.

Every batch of simulated events is landed as trusted events and marked `passed` (validation is the
Dagster asset's job and is not measured here). Before the refresh learns from it, each batch is
scored by `core.evaluation.policies.score_then_learn`, as `rec-pipeline demo` scores: NDCG@10 over
the batch's users who touch an item they had not touched before, ranking the full catalogue, for

* `online`: the champion as it stands, refreshed by `core.model.refresh.refresh` after every batch
  (the popularity floor until the first promotion, shown as "-");
* `frozen`: the champion at the end of the warm-up batches, never refreshed again;
* `popularity`: the all-time popularity floor the gate uses;
* `oracle`: the simulator's ground-truth relevance at the batch's start.

Tastes rotate with period `--drift-period-days`, and users and items keep arriving over the first
30 days, so a frozen model loses both its users' current tastes and the newcomers.

Writes `<out>/drift.csv` (one row per batch) and `<out>/drift.png` (NDCG@10 per batch, one line per
policy), and prints the table and a summary.

Usage: python benchmarks/drift.py [--batches 24] [--events-per-batch 20000] [--warmup 4] [--seed 0]
                                  [--drift-period-days 30] [--candidates N] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import polars as pl
from common import ROOT, measured, print_provenance, print_report

POLICIES = ("online", "frozen", "popularity", "oracle")
K = 10
# Before any real date, so no event falls after the contract's "now + 1 day".
SIM_START = datetime(2020, 1, 1, tzinfo=timezone.utc)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=24)
    parser.add_argument("--events-per-batch", type=int, default=20_000)
    parser.add_argument("--warmup", type=int, default=4, help="batches after which the frozen model is taken")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--drift-period-days", type=float, default=30.0)
    parser.add_argument("--candidates", type=int, help="retrieval candidates per user (default: RefreshConfig's)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args(argv)
    if not 1 <= args.warmup < args.batches:
        parser.error("--warmup must be at least 1 and below --batches")
    return args


def run(args: argparse.Namespace) -> list[dict]:
    """Every batch scored by `core.evaluation.policies.score_then_learn` before the online pipeline
    learns it, as `rec-pipeline demo` scores; the frozen model joins after the warm-up batches."""
    from rec_pipeline.core.evaluation.policies import (
        FrozenModel,
        OnlinePipeline,
        Oracle,
        PipelineHome,
        PopularityFloor,
        score_then_learn,
    )
    from rec_pipeline.core.evaluation.simulator import Simulator, SimulatorConfig
    from rec_pipeline.core.ingest.catalogue import upsert_items
    from rec_pipeline.core.model.config import RefreshConfig

    config = RefreshConfig() if args.candidates is None else RefreshConfig(candidates=args.candidates)
    simulator = Simulator(SimulatorConfig(seed=args.seed, start=SIM_START, drift_period_days=args.drift_period_days))
    batches = list(simulator.iter_event_chunks(args.batches * args.events_per_batch, args.events_per_batch))
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="rec_pipeline_drift_") as home_dir:
        home = PipelineHome.scratch(Path(home_dir))
        with home.warehouse.connect() as con:
            upsert_items(con, simulator.catalogue())
        online = OnlinePipeline(home, config)
        baselines = {"popularity": PopularityFloor(online), "oracle": Oracle(simulator)}

        def after_batch(number: int, scored: list[dict]) -> None:
            batch = batches[len(rows)]
            ndcg = {f"{row['policy']}_ndcg": row["ndcg"] for row in scored}
            rows.append({"batch": len(rows) + 1, "days": (batch["ts"].max() - SIM_START).total_seconds() / 86_400,
                         "users": scored[0]["users"], "frozen_ndcg": None, **ndcg,
                         "online_ndcg": ndcg["online_ndcg"] if online.ranked_with else None,
                         "promoted": online.last_refresh.promoted,
                         "refresh_s": online.learn_seconds - sum(r["refresh_s"] for r in rows)})

        n_items, warm = len(simulator.item_ids), batches[:args.warmup]
        score_then_learn({"online": online, **baselines}, warm, K, n_items, batches[0].clear(), after_batch)
        score_then_learn({"online": online, "frozen": FrozenModel(online), **baselines}, batches[args.warmup:], K,
                        n_items, pl.concat(warm), after_batch)
    return rows


# --- output -----------------------------------------------------------------------------------


def summary(rows: list[dict], warmup: int) -> dict:
    """Means over the batches after warm-up, over their first and last thirds, and ratios to the oracle."""
    after = [r for r in rows if r["batch"] > warmup and r["oracle_ndcg"]]
    third = max(1, len(after) // 3)
    out = {}
    for policy in POLICIES:
        key = f"{policy}_ndcg"
        values = [r[key] or 0.0 for r in after]
        out[policy] = {"mean": statistics.fmean(values), "first_third": statistics.fmean(values[:third]),
                       "last_third": statistics.fmean(values[-third:]),
                       "of_oracle": statistics.fmean((r[key] or 0.0) / r["oracle_ndcg"] for r in after)}
    return out


def write_outputs(report: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import polars as pl

    out.mkdir(parents=True, exist_ok=True)
    rows = report["results"]
    pl.DataFrame(rows).write_csv(out / "drift.csv")
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for policy in POLICIES:
        ax.plot([r["batch"] for r in rows], [r[f"{policy}_ndcg"] for r in rows], marker="o", ms=3, label=policy)
    ax.axvline(report["warmup"] + 0.5, color="grey", ls="--", lw=1)
    ax.text(report["warmup"] + 0.7, ax.get_ylim()[1] * 0.97, "frozen from here", va="top", fontsize=8, color="grey")
    ax.set(xlabel=f"batch ({report['events_per_batch']:,} events each; tastes rotate every "
                  f"{report['drift_period_days']:g} days)",
           ylabel="NDCG@10 before learning the batch", title="Online refresh vs a model frozen after warm-up")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "drift.png", dpi=120)


def print_table(report: dict) -> None:
    print_provenance(report)
    print(f"{'batch':>5} {'day':>5} {'users':>6} " + " ".join(f"{p:>10}" for p in POLICIES)
          + f" {'promoted':>8} {'refresh s':>9}")
    for r in report["results"]:
        cells = " ".join(f"{r[f'{p}_ndcg']:>10.4f}" if r[f"{p}_ndcg"] is not None else f"{'-':>10}" for p in POLICIES)
        print(f"{r['batch']:>5} {r['days']:>5.1f} {r['users']:>6} {cells} {str(r['promoted']):>8} {r['refresh_s']:>9.1f}")
    print(f"after warm-up (batches {report['warmup'] + 1}-{len(report['results'])}):")
    for policy, s in report["summary"].items():
        print(f"  {policy:<10} mean {s['mean']:.4f}  first third {s['first_third']:.4f}  last third "
              f"{s['last_third']:.4f}  mean ratio to oracle {s['of_oracle']:.2f}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    report = measured(lambda: run(args), warmup=args.warmup, events_per_batch=args.events_per_batch,
                      drift_period_days=args.drift_period_days, seed=args.seed, candidates=args.candidates)
    report["summary"] = summary(report["results"], args.warmup)
    write_outputs(report, args.out)
    print_report(report, print_table, args.json)


if __name__ == "__main__":
    main()
