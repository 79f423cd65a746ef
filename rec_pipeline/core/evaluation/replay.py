"""Replay evaluation (DESIGN.md, "Evaluation protocol"): a historical log run through the online
loop test-then-train, against baselines, on identical batches.

Protocol: events sorted by timestamp (stable); the first `warmup` share is history; the rest is cut
into `batches` equal-count consecutive batches. For each batch, before any policy trains on it, the
targets of each user active in the batch are the items they touch in it and had not touched before;
every policy ranks the full catalogue minus those touched items; Recall@K, NDCG@K (binary) and
catalogue coverage are computed by `core.metrics`; means are over users, then over batches. Then
every policy learns the batch. Targets and exclusions come from the replay's own copy of the
history, never from a policy's state.

Policies
* `online`: the production refresh (`core.refresh.refresh`: warm start, replay buffer, gate) on its
  own warehouse under a temporary home; ranked with its champion as `rec-pipeline` would.
* `static`: the `online` champion after the warm-up, never refreshed again (same warehouse features).
* `full_retrain`: the same refresh with `from_scratch=True` on a second warehouse: both models
  trained from scratch, retrieval on all history, before each batch; same gate.
* `popularity`: items by interaction count over all history.
* `recent_popularity`: the same over the previous batch's window (for the first batch, the last
  batch-sized window of the warm-up).
* `ials`: implicit's ALS (the `replay` extra) refit on all history before each batch, confidence
  1 + the user-item interaction count; general settings (64 factors, regularization 0.05, 15
  iterations), not tuned per dataset.

Users a model does not know get the pipeline's popularity floor from that policy's own features (the
gate's floor: decayed popularity over the longest window, `popular_lists`); `ials` falls back to the
all-history popularity list, as the baseline is defined. `train_seconds` is the time spent
learning: refreshes for `online`/`full_retrain`, the warm-up refresh for `static`; the popularity
baselines count at ranking time and report 0.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import polars as pl

from rec_pipeline.config import Settings
from rec_pipeline.core.ingest.catalogue import upsert_items
from rec_pipeline.core.evaluation.scoring import score_lists
from rec_pipeline.core.ingest.event_files import write_events
from rec_pipeline.core.ingest.landing import land_file, land_trusted
from rec_pipeline.core.model.recommender import Recommender
from rec_pipeline.core.model.refresh import RefreshConfig, model_lists, popular_lists, popular_lists_from, refresh
from rec_pipeline.core.model.registry import ModelRegistry

POLICIES = ("online", "static", "full_retrain", "popularity", "recent_popularity", "ials")
MODEL_POLICIES = ("online", "static", "full_retrain")


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
            raise ValueError(f"policies must be among {', '.join(POLICIES)}; got {sorted(unknown) or 'none'}")
        if self.batches < 1 or not 0 < self.warmup < 1 or self.k < 1:
            raise ValueError("batches >= 1, 0 < warmup < 1 and k >= 1 required")


def split(events: pl.DataFrame, warmup: float, batches: int) -> tuple[pl.DataFrame, list[pl.DataFrame]]:
    """(warm-up history, consecutive equal-count batches) after a stable sort by ts."""
    ordered = events.sort("ts", maintain_order=True)
    cut = int(ordered.height * warmup)
    rest = ordered.height - cut
    if cut == 0 or rest < batches:
        raise ValueError(f"{ordered.height} events cannot give a warm-up and {batches} non-empty batches")
    bounds = np.linspace(cut, ordered.height, batches + 1).round().astype(int)
    return ordered.head(cut), [ordered.slice(a, b - a) for a, b in zip(bounds[:-1], bounds[1:])]


def targets_and_seen(history: pl.DataFrame, batch: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """([user_id, item_id] new items per active user, [user_id, item_id] what those users touched before)."""
    touched = history.select("user_id", "item_id").unique()
    targets = batch.select("user_id", "item_id").unique().join(touched, on=["user_id", "item_id"], how="anti")
    seen = touched.join(targets.select("user_id").unique(), on="user_id", how="semi")
    return targets.sort("user_id", "item_id"), seen


def counts_pool(events: pl.DataFrame, n: int) -> pl.DataFrame:
    """[item_id, score]: the `n` most interacted-with items (ties by item_id)."""
    return (events.group_by("item_id").len().rename({"len": "score"}).with_columns(pl.col("score").cast(pl.Float64))
            .sort(["score", "item_id"], descending=[True, False]).head(n))


@dataclass
class _Home:
    """A temporary REC_PIPELINE_HOME the production refresh runs in."""

    settings: Settings
    config: RefreshConfig
    registry: ModelRegistry = field(init=False)

    def __post_init__(self) -> None:
        self.settings.ensure_dirs()
        self.registry = ModelRegistry(self.settings.models_dir)

    def learn(self, events: pl.DataFrame, name: str) -> float:
        """Land `events` (marked passed: they are replayed, not validated) and refresh; seconds spent."""
        path = write_events(events, self.settings.imports_dir / f"{name}.parquet")
        land_trusted(self.settings.warehouse(), path, events.height)
        start = time.perf_counter()
        refresh(self.settings.warehouse(), self.registry, self.settings.serving_path, self.config)
        return time.perf_counter() - start

    def champion(self) -> Recommender | None:
        with self.settings.warehouse().connect() as con:
            row = self.registry.champion(con)
            return Recommender.load(self.registry.verified_artifact(con, row.version)) if row else None

    def lists(self, model: Recommender | None, users: list[str], seen: pl.DataFrame, at) -> pl.DataFrame:
        """`model`'s lists for `users` on this home's features; users it does not know (everyone,
        without a model) get the production floor: the most popular items over the longest window."""
        with self.settings.warehouse().connect() as con:
            fallback = popular_lists(con, users, seen, at, self.config, trending=False)
            return fallback if model is None else model_lists(con, model, users, seen, at, self.config, fallback)


def replay(events: pl.DataFrame, items: pl.DataFrame | None, workdir: Path, config: ReplayConfig = ReplayConfig(),
           progress: Callable[[int, dict], None] | None = None) -> dict:
    """Run every policy over the same batches; returns {"events", "batches", "per_batch", "policies"}."""
    warm, batches = split(events, config.warmup, config.batches)
    n_items = max(events["item_id"].n_unique(), items.height if items is not None else 0)
    homes = _homes(workdir, config, items)
    warmup_seconds = {name: home.learn(warm, "warmup") for name, home in homes.items()}
    learn_seconds = dict(warmup_seconds)
    static = homes["online"].champion() if "static" in config.policies else None
    history, previous = warm, warm.tail(batches[0].height)
    per_batch, ials_seconds = [], []
    for number, batch in enumerate(batches, start=1):
        row = _score_batch(number, batch, history, previous, homes, static, n_items, config, ials_seconds)
        per_batch.extend(row)
        for name, home in homes.items():
            learn_seconds[name] += home.learn(batch, f"batch-{number:03d}")
        history, previous = pl.concat([history, batch]), batch
        if progress:
            progress(number, {r["policy"]: r["ndcg"] for r in row})
    # The popularity baselines fit nothing ahead of a batch: their counting is part of ranking.
    seconds = {"online": learn_seconds.get("online"), "static": warmup_seconds.get("online"),
               "full_retrain": learn_seconds.get("full_retrain"), "popularity": 0.0, "recent_popularity": 0.0,
               "ials": sum(ials_seconds)}
    return {"events": events.height, "batches": len(batches), "k": config.k, "per_batch": per_batch,
            "policies": _summary(per_batch, seconds, config.k)}


def _homes(workdir: Path, config: ReplayConfig, items: pl.DataFrame | None) -> dict[str, _Home]:
    wanted = {"online": config.refresh} if {"online", "static"} & set(config.policies) else {}
    if "full_retrain" in config.policies:
        wanted["full_retrain"] = replace(config.refresh, from_scratch=True)
    homes = {name: _Home(Settings(home=workdir / name), refresh_config) for name, refresh_config in wanted.items()}
    if items is not None:
        for home in homes.values():
            with home.settings.warehouse().connect() as con:
                upsert_items(con, items)
    return homes


def _score_batch(number: int, batch: pl.DataFrame, history: pl.DataFrame, previous: pl.DataFrame,
                 homes: dict[str, _Home], static: Recommender | None, n_items: int, config: ReplayConfig,
                 ials_seconds: list[float]) -> list[dict]:
    targets, seen = targets_and_seen(history, batch)
    users = targets["user_id"].unique().sort().to_list()
    longest = seen.group_by("user_id").len()["len"].max() or 0
    popular = popular_lists_from(counts_pool(history, config.k + longest), users, seen, config.k)
    lists: dict[str, Callable[[], pl.DataFrame]] = {
        "popularity": lambda: popular,
        "recent_popularity": lambda: popular_lists_from(counts_pool(previous, config.k + longest), users, seen,
                                                        config.k),
        "online": lambda: homes["online"].lists(homes["online"].champion(), users, seen, batch["ts"].min()),
        "static": lambda: homes["online"].lists(static, users, seen, batch["ts"].min()),
        "full_retrain": lambda: homes["full_retrain"].lists(homes["full_retrain"].champion(), users, seen,
                                                            batch["ts"].min()),
        "ials": lambda: ials_lists(history, users, config.k, popular, ials_seconds),
    }
    rows = []
    for policy in config.policies:
        metrics = score_lists(lists[policy](), targets, n_items, config.k)
        rows.append({"batch": number, "policy": policy, "users": metrics.users, "recall": metrics.recall,
                     "ndcg": metrics.ndcg, "coverage": metrics.coverage})
    return rows


def ials_lists(history: pl.DataFrame, users: list[str], k: int, fallback: pl.DataFrame,
               seconds: list[float]) -> pl.DataFrame:
    """iALS top-k (items the user touched filtered out) for the users in `history`; `fallback`
    (popularity) for the others. Appends the fit time to `seconds`."""
    from implicit.cpu.als import AlternatingLeastSquares
    from scipy.sparse import csr_matrix
    from threadpoolctl import threadpool_limits

    user_ids = history["user_id"].unique().sort()
    item_ids = history["item_id"].unique().sort()
    pairs = (history.group_by("user_id", "item_id").len()
             .join(user_ids.to_frame().with_row_index("u"), on="user_id")
             .join(item_ids.to_frame().with_row_index("i"), on="item_id"))
    matrix = csr_matrix(((1 + pairs["len"]).cast(pl.Float32).to_numpy(), (pairs["u"].to_numpy(), pairs["i"].to_numpy())),
                        shape=(len(user_ids), len(item_ids)))
    start = time.perf_counter()
    with threadpool_limits(1, "blas"):  # implicit parallelises itself; a BLAS pool under it thrashes
        model = AlternatingLeastSquares(factors=64, regularization=0.05, iterations=15, random_state=0)
        model.fit(matrix, show_progress=False)
    seconds.append(time.perf_counter() - start)
    row = {user: i for i, user in enumerate(user_ids.to_list())}
    known = [u for u in users if u in row]
    ranked = fallback.filter(~pl.col("user_id").is_in(known))
    if known:
        rows = np.array([row[u] for u in known])
        ids, scores = model.recommend(rows, matrix[rows], N=k, filter_already_liked_items=True)
        names = item_ids.to_numpy()
        valid = ids >= 0
        ranked = pl.concat([ranked.select("user_id", "item_id", "rank", "score"), pl.DataFrame({
            "user_id": np.repeat(known, ids.shape[1])[valid.ravel()],
            "item_id": names[ids[valid]],
            "rank": np.tile(np.arange(1, ids.shape[1] + 1, dtype=np.int32), len(known))[valid.ravel()],
            "score": scores[valid].astype(np.float64)})])
    return ranked


def _summary(per_batch: list[dict], seconds: dict[str, float | None], k: int) -> dict:
    frame = pl.DataFrame(per_batch)
    out = {}
    for policy in frame["policy"].unique(maintain_order=True):
        rows = frame.filter(pl.col("policy") == policy)
        seconds_spent = seconds[policy] or 0.0
        out[policy] = {f"recall@{k}": rows["recall"].mean(), f"ndcg@{k}": rows["ndcg"].mean(),
                       "coverage": rows["coverage"].mean(), "train_seconds": round(seconds_spent, 2)}
    return out


def load_log(path: Path, workdir: Path) -> tuple[pl.DataFrame, pl.DataFrame | None]:
    """(events, catalogue or None) from a MovieLens folder in any supported layout, or from one event
    file landed through the pipeline's contract into a scratch warehouse (bad rows are left out, as
    landing quarantines them)."""
    from rec_pipeline.core.ingest.contract import EVENT_COLUMNS
    from rec_pipeline.core.evaluation.movielens import load_movielens
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
