"""Replay evaluation (`../shared/DESIGN.md`, "Evaluation protocol"): a historical log run through
the online loop test-then-train, against baselines, on identical batches.

Protocol: events sorted by timestamp (stable); the first `warmup` share is history; the rest is cut
into `batches` equal-count consecutive batches. Every policy learns the history, then
`policies.score_then_learn` scores each batch before any policy learns it (targets: the items each
active user touches in it and had not touched before; every policy ranks the full catalogue minus
the touched items; Recall@K, NDCG@K (binary) and catalogue coverage from `metrics`; means over
users, then over batches).

Policies (`policies.py`)
* `online`: the production refresh (`model.refresh.refresh`: warm start, replay buffer, gate) on its
  own warehouse in a scratch home; ranked with its champion as `rec-pipeline` would.
* `static`: the `online` champion after the warm-up, never refreshed again (same warehouse features).
* `full_retrain`: the same refresh with `from_scratch=True` in a second home: both models trained
  from scratch, retrieval on all history, before each batch; same gate.
* `popularity`: items by interaction count over all history.
* `recent_popularity`: the same over the last batch-sized window (the previous batch; for the first
  batch, the end of the warm-up).
* `ials`: implicit's ALS refit on all history before each batch, with a popularity fallback.

Users a model does not know get the pipeline's popularity floor from that policy's own features (the
gate's floor). `train_seconds` is each policy's `learn_seconds`: refreshes for `online` and
`full_retrain`, the warm-up refresh for `static`, the fits for `ials`, 0 for counting.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import polars as pl

from rec_pipeline.core.errors import InputError
from rec_pipeline.core.evaluation.policies import (
    IALS,
    CountPopularity,
    FrozenModel,
    OnlinePipeline,
    PipelineHome,
    Policy,
    score_then_learn,
)
from rec_pipeline.core.ingest.catalogue import upsert_items
from rec_pipeline.core.ingest.landing import land_file
from rec_pipeline.core.model.config import RefreshConfig

POLICIES = ("online", "static", "full_retrain", "popularity", "recent_popularity", "ials")


@dataclass(frozen=True)
class ReplayConfig:
    batches: int = 20
    warmup: float = 0.5
    k: int = 10
    policies: tuple[str, ...] = POLICIES
    refresh: RefreshConfig = field(default_factory=RefreshConfig)

    def __post_init__(self) -> None:
        unknown = set(self.policies) - set(POLICIES)
        if unknown or not self.policies:
            raise InputError(f"policies must be among {', '.join(POLICIES)}; got {sorted(unknown) or 'none'}")
        if "static" in self.policies and "online" not in self.policies:
            raise InputError("the static policy is the online champion frozen after the warm-up: add online")
        if self.batches < 1 or not 0 < self.warmup < 1 or self.k < 1:
            raise InputError("batches >= 1, 0 < warmup < 1 and k >= 1 required")


def split(events: pl.DataFrame, warmup: float, batches: int) -> tuple[pl.DataFrame, list[pl.DataFrame]]:
    """(warm-up history, consecutive equal-count batches) after a stable sort by ts."""
    ordered = events.sort("ts", maintain_order=True)
    cut = int(ordered.height * warmup)
    rest = ordered.height - cut
    if cut == 0 or rest < batches:
        raise InputError(f"{ordered.height} events cannot give a warm-up and {batches} non-empty batches")
    bounds = np.linspace(cut, ordered.height, batches + 1).round().astype(int)
    return ordered.head(cut), [ordered.slice(a, b - a) for a, b in zip(bounds[:-1], bounds[1:])]


def replay(events: pl.DataFrame, items: pl.DataFrame | None, workdir: Path, config: ReplayConfig = ReplayConfig(),
           after_batch: Callable[[int, list[dict]], None] | None = None) -> dict:
    """Run every policy over the same batches; returns {"events", "batches", "k", "per_batch", "policies"}."""
    warm, batches = split(events, config.warmup, config.batches)
    n_items = max(events["item_id"].n_unique(), items.height if items is not None else 0)
    policies = _policies(workdir, config, items, batch_events=batches[0].height)
    for policy in policies.values():
        policy.learn(warm)
    per_batch = score_then_learn(policies, batches, config.k, n_items, warm, after_batch)
    seconds = {name: policy.learn_seconds for name, policy in policies.items()}
    return {"events": events.height, "batches": len(batches), "k": config.k, "per_batch": per_batch,
            "policies": _summary(per_batch, seconds, config.k)}


def _policies(workdir: Path, config: ReplayConfig, items: pl.DataFrame | None, batch_events: int) -> dict[str, Policy]:
    def pipeline(name: str, refresh_config: RefreshConfig) -> OnlinePipeline:
        home = PipelineHome.scratch(workdir / name)
        if items is not None:
            with home.warehouse.connect() as con:
                upsert_items(con, items)
        return OnlinePipeline(home, refresh_config)

    online = pipeline("online", config.refresh) if "online" in config.policies else None
    makers: dict[str, Callable[[], Policy]] = {
        "online": lambda: online,
        "static": lambda: FrozenModel(online),  # frozen at its first lists, after the warm-up
        "full_retrain": lambda: pipeline("full_retrain", replace(config.refresh, from_scratch=True)),
        "popularity": CountPopularity,
        "recent_popularity": lambda: CountPopularity(window_events=batch_events),
        "ials": IALS,
    }
    return {name: makers[name]() for name in config.policies}


def _summary(per_batch: list[dict], seconds: dict[str, float], k: int) -> dict:
    frame = pl.DataFrame(per_batch)
    out = {}
    for policy in frame["policy"].unique(maintain_order=True):
        rows = frame.filter(pl.col("policy") == policy)
        out[policy] = {f"recall@{k}": rows["recall"].mean(), f"ndcg@{k}": rows["ndcg"].mean(),
                       "coverage": rows["coverage"].mean(), "train_seconds": round(seconds[policy], 2)}
    return out


def load_log(path: Path, workdir: Path) -> tuple[pl.DataFrame, pl.DataFrame | None]:
    """(events, catalogue or None) from a MovieLens folder in any supported layout, or from one event
    file landed through the pipeline's contract into a scratch warehouse (bad rows are left out, as
    landing quarantines them)."""
    from rec_pipeline.core.evaluation.movielens import load_movielens
    from rec_pipeline.core.ingest.contract import EVENT_COLUMNS
    from rec_pipeline.core.ops.warehouse import Warehouse

    if path.is_dir():
        data = load_movielens(path)
        return data.events, data.items
    warehouse = Warehouse(workdir / "log.duckdb")
    report = land_file(warehouse, path)
    if report.status != "landed":
        raise ValueError(f"{path}: {report.reason or report.status}")
    with warehouse.connect() as con:
        return con.sql(f"SELECT {', '.join(EVENT_COLUMNS)} FROM events ORDER BY ts, source_row").pl(), None


def write_report(result: dict, out: Path) -> list[Path]:
    """per_batch.csv, ndcg.png (NDCG@K per batch, one line per policy) and results.md in `out`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    k = result["k"]
    per_batch = pl.DataFrame(result["per_batch"])
    per_batch.write_csv(out / "per_batch.csv")
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for policy in result["policies"]:
        rows = per_batch.filter(pl.col("policy") == policy)
        ax.plot(rows["batch"], rows["ndcg"], marker="o", ms=3, label=policy)
    ax.set(xlabel=f"batch (of {result['batches']}; {result['events']:,} events in all)", ylabel=f"NDCG@{k}",
           title="Replay, test-then-train: each batch scored before any policy learns it")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "ndcg.png", dpi=120)
    plt.close(fig)
    lines = [f"| policy | Recall@{k} | NDCG@{k} | coverage | train seconds |", "|---|---|---|---|---|"]
    lines += [f"| {name} | {m[f'recall@{k}']:.4f} | {m[f'ndcg@{k}']:.4f} | {m['coverage']:.4f} | {m['train_seconds']:.1f} |"
              for name, m in result["policies"].items()]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    return [out / "per_batch.csv", out / "ndcg.png", out / "results.md"]
