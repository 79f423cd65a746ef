"""Second-stage ranker: LightGBM lambdarank over retrieval candidates (`../shared/DESIGN.md`, "Ranking (LightGBM)").

Data
    One row per (user_id, item_id) candidate with ``retrieval_score``, ``retrieval_rank`` and the
    columns of ``features.user_item_features`` (:data:`RANKING_FEATURES`; ``ui_last_event_type`` is
    encoded as ``ui_last_event_weight``, the event type's default weight, when that column is
    absent). Nulls are missing values for LightGBM. A query is a user: :func:`label_candidates`
    marks candidates the user touched in the target window (``label`` 1/0) and drops users with no
    positive (or only positives): they carry no pairwise signal. A target item that retrieval did
    not propose is simply absent, so the ranker's recall is bounded by retrieval's recall@N.

Training
    :meth:`Ranker.fit` sorts rows by (user_id, retrieval_rank) before computing the ``group`` sizes
    (LightGBM needs each query's rows contiguous; Polars' streaming engine does not keep order, so
    the input order is never trusted). ``base=None`` trains ``config.rounds`` trees from scratch.
    With a base (the champion) it returns a NEW ranker and leaves the base untouched:

    * ``update="continue"`` (default): ``config.continue_rounds`` trees added on top of the base
      via ``lgb.train(init_model=base booster)`` (boosting starts from the base's predictions).
    * ``update="refit"``: same trees, leaf values refit on the new data with
      ``Booster.refit(..., decay_rate=config.refit_decay_rate)``
      (``new_leaf = decay * old_leaf + (1 - decay) * fitted_leaf``).

    Measured on synthetic candidates (base: 2000 users x 40 candidates; update: 500 users of a
    shifted batch; NDCG@10 on 1000 held-out users of that batch, 3 seeds): no shift — base 0.725,
    continue 0.724, refit 0.725; mild shift — base 0.645, continue 0.693, refit 0.654; strong shift
    (a feature's sign flips, two new ones matter) — base 0.353, continue 0.624, refit 0.393 (refit
    cannot split on features the old trees ignore). Over 8 drifting micro-batches continue reached
    0.70 and refit 0.49. Hence ``continue``; it grows the model by ``continue_rounds`` trees per
    refresh and scoring cost grows with it, so once the base holds ``max_trees`` trees the refresh
    trains ``rounds`` trees from scratch on the new data instead (the gate judges that model too).

Threads
    ``num_threads`` (training) defaults to 1: on the 2-vCPU host with another busy process, 2
    OpenMP threads made a 0.4 s fit take 4-43 s (threads spin-waiting at each iteration's
    barriers); 1 thread was steady. ``predict_threads`` (scoring, explanations) defaults to all
    cores: a prediction is one parallel region, and 2 threads scored 1M rows 1.86x faster (median
    3.24 s against 6.04 s) right after a Keras fit in the same process
    (``benchmarks/scoring_threads.py``).

Explanations
    :meth:`Ranker.explain` gives one short reason per row: features' contributions are summed per
    phrase (:data:`REASON_PHRASES`; a feature without a phrase is named as itself) and the largest
    positive one wins. Features that only describe the user (activity, account age) are the same for
    all of a user's candidates and say nothing about why *this* item, so they never give the reason;
    a row with no positive item-side contribution gets :data:`DEFAULT_REASON`. ``method="shap"``
    (default) uses LightGBM's exact TreeSHAP (``pred_contrib=True``): ~0.65 ms/row on 1 thread with
    100 trees, ~100x ``predict`` — 100k users x 20 rows would take ~21 min, so call it only for the
    rows shown. ``method="path"`` is the cheap path attribution (Saabas): along each tree's decision
    path the change of the node's expected value is credited to the split's feature (``pred_leaf``
    plus per-leaf tables): ~12 us/row (2M rows in 25 s), same top reason as SHAP for 92% of rows.
    Both decompose the raw score exactly; they differ in how interactions are shared out.

Persistence
    ``ranker.txt`` (LightGBM's text model format) + ``ranker.json`` (format version, features,
    config, training info). No pickle. Scores round-trip exactly.

LightGBM is imported lazily (about 1.5 s and 200 MB), only when a ranker is trained, loaded or used.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl

from rec_pipeline.core.ingest.contract import DEFAULT_EVENT_WEIGHTS

FORMAT_VERSION = 1
MODEL_FILE, META_FILE = "ranker.txt", "ranker.json"
MAX_GROUP_ROWS = 10_000  # keep LightGBM queries at or below this size

RANKING_FEATURES: tuple[str, ...] = (
    "retrieval_score",
    "retrieval_rank",
    "ui_strength",
    "ui_n_events",
    "ui_hours_since_last",
    "ui_last_event_weight",  # derived from ui_last_event_type when absent
    "item_pop_1h",
    "item_pop_1d",
    "item_pop_7d",
    "item_trending",
    "item_n_events",
    "item_n_users",
    "item_age_hours",
    "item_hours_since_last",
    "user_strength",
    "user_n_events",
    "user_n_items",
    "user_hours_since_last",
    "user_age_hours",
    "user_cat_affinity",
    "user_cat_share",
)

# Same value for every candidate of a user: never the reason an item is shown.
USER_ONLY_FEATURES: frozenset[str] = frozenset(
    {"user_strength", "user_n_events", "user_n_items", "user_hours_since_last", "user_age_hours"}
)

REASON_PHRASES: dict[str, str] = {
    "retrieval_score": "similar to what you engage with",
    "retrieval_rank": "similar to what you engage with",
    "ui_strength": "you engaged with it recently",
    "ui_n_events": "you engaged with it recently",
    "ui_hours_since_last": "you engaged with it recently",
    "ui_last_event_weight": "you engaged with it recently",
    "item_trending": "trending now",
    "item_pop_1h": "trending now",
    "item_pop_1d": "popular today",
    "item_pop_7d": "popular this week",
    "item_n_events": "popular overall",
    "item_n_users": "popular overall",
    "user_cat_affinity": "in categories you like",
    "user_cat_share": "in categories you like",
}
DEFAULT_REASON = "picked for you"


@dataclass(frozen=True)
class RankerConfig:
    num_leaves: int = 31
    learning_rate: float = 0.05
    rounds: int = 100  # trees when training from scratch
    continue_rounds: int = 20  # trees added per refresh with update="continue"
    # update="continue" retrains from scratch instead once the base holds this many trees: scoring
    # cost grows with the trees, and a model that only ever grows would slow every publish.
    max_trees: int = 300
    min_data_in_leaf: int = 20
    k: int = 10  # the cut-off the ranking is optimised for (ndcg@k)
    lambdarank_truncation_level: int = 13  # k + 3 (LightGBM docs: "slightly higher than k")
    update: Literal["continue", "refit"] = "continue"  # how fit(base=...) refreshes the champion (measured)
    refit_decay_rate: float = 0.9  # refit: new_leaf = decay * old + (1 - decay) * fitted
    seed: int = 0
    # 1: in a process that has imported TensorFlow, LightGBM's OpenMP threads spin against its pool
    # (30 trees: 37 s on 2 threads, 0.7 s on 1, measured in a refresh); 0 = all cores.
    num_threads: int = 1
    # Scoring is one parallel region per call, with no per-iteration barriers to spin on: 0 (all
    # cores) scored 1.86x faster than 1 thread next to TensorFlow (benchmarks/scoring_threads.py).
    predict_threads: int = 0
    features: tuple[str, ...] = RANKING_FEATURES

    def __post_init__(self) -> None:
        object.__setattr__(self, "features", tuple(self.features))
        if self.update not in ("continue", "refit"):
            raise ValueError(f"update must be 'continue' or 'refit', got {self.update!r}")
        if self.num_leaves < 2 or self.rounds < 1 or self.continue_rounds < 1 or self.min_data_in_leaf < 1:
            raise ValueError("num_leaves >= 2, rounds >= 1, continue_rounds >= 1, min_data_in_leaf >= 1 required")
        if self.max_trees < self.rounds:
            raise ValueError("max_trees must be >= rounds")
        if not self.learning_rate > 0 or self.k < 1 or self.lambdarank_truncation_level < 1:
            raise ValueError("learning_rate > 0, k >= 1 and lambdarank_truncation_level >= 1 required")
        if not 0.0 <= self.refit_decay_rate <= 1.0:
            raise ValueError("refit_decay_rate must be in [0, 1]")
        if not self.features or len(set(self.features)) != len(self.features):
            raise ValueError("features must be a non-empty list of distinct column names")

    def params(self) -> dict[str, Any]:
        return {
            "objective": "lambdarank",
            "metric": "ndcg",
            "eval_at": [self.k],
            "num_leaves": self.num_leaves,
            "learning_rate": self.learning_rate,
            "min_data_in_leaf": self.min_data_in_leaf,
            "lambdarank_truncation_level": self.lambdarank_truncation_level,
            "seed": self.seed,
            "deterministic": True,
            "force_row_wise": True,
            "num_threads": self.num_threads,
            "verbose": -1,
        }

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["features"] = list(self.features)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RankerConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: (tuple(v) if k == "features" else v) for k, v in data.items() if k in known})


# ------------------------------------------------------------------------------------------- data


def _order_columns(frame: pl.DataFrame) -> list[str]:
    return ["user_id", "retrieval_rank", "item_id"] if "retrieval_rank" in frame.columns else ["user_id", "item_id"]


def label_candidates(candidates: pl.DataFrame, targets: pl.DataFrame) -> pl.DataFrame:
    """``candidates`` plus ``label`` (Int32: 1 if (user_id, item_id) is in ``targets``, else 0).

    Sorted by user_id, then retrieval_rank (then item_id). Users whose candidates are all 0 (no
    target was retrieved) or all 1 are dropped: a query without both classes has no ranking signal.
    Targets that are not among the candidates do not appear at all — the ranker can only reorder
    what retrieval proposed, so its recall is bounded by retrieval's.
    """
    if "label" in candidates.columns:
        raise ValueError("candidates already have a 'label' column")
    schema = candidates.schema
    hits = (
        targets.select(pl.col("user_id").cast(schema["user_id"]), pl.col("item_id").cast(schema["item_id"]))
        .unique()
        .with_columns(label=pl.lit(1, pl.Int32))
    )
    out = candidates.join(hits, on=["user_id", "item_id"], how="left").with_columns(pl.col("label").fill_null(0))
    informative = out.group_by("user_id").agg(pos=pl.col("label").sum(), n=pl.len())
    keep = informative.filter((pl.col("pos") > 0) & (pl.col("pos") < pl.col("n"))).select("user_id")
    return out.join(keep, on="user_id", how="semi").sort(_order_columns(out))


def _with_derived(frame: pl.DataFrame, features: Sequence[str]) -> pl.DataFrame:
    if ("ui_last_event_weight" in features and "ui_last_event_weight" not in frame.columns
            and "ui_last_event_type" in frame.columns):
        weights = {k: float(v) for k, v in DEFAULT_EVENT_WEIGHTS.items()}
        frame = frame.with_columns(
            ui_last_event_weight=pl.col("ui_last_event_type").replace_strict(weights, default=pl.lit(None, pl.Float64), return_dtype=pl.Float64)
        )
    return frame


def _matrix(frame: pl.DataFrame, features: Sequence[str]) -> np.ndarray:
    """float64 rows x features in ``features`` order; null -> NaN (LightGBM's missing value)."""
    frame = _with_derived(frame, features)
    missing = [f for f in features if f not in frame.columns]
    if missing:
        raise KeyError(f"ranking frame lacks feature columns {missing}")
    if frame.height == 0:
        return np.empty((0, len(features)), np.float64)
    return frame.select(pl.col(f).cast(pl.Float64) for f in features).to_numpy(order="c").astype(np.float64, copy=False)


def _training_arrays(train: pl.DataFrame, features: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(X, label, group sizes) with each user's rows contiguous, whatever the input order."""
    for col in ("user_id", "label"):
        if col not in train.columns:
            raise KeyError(f"training frame lacks column {col!r}")
    if train.height == 0:
        raise ValueError("empty training frame")
    if train["label"].null_count():
        raise ValueError("null labels")
    ordered = train.sort(_order_columns(train) if "item_id" in train.columns
                         else [c for c in ("user_id", "retrieval_rank") if c in train.columns])
    runs = ordered.select(pl.col("user_id").rle_id())["user_id"].to_numpy()
    groups = np.bincount(runs)
    if len(groups) != ordered["user_id"].n_unique():  # cannot happen after the sort; a cheap guard
        raise RuntimeError("queries are not contiguous")
    if groups.max() > MAX_GROUP_ROWS:
        raise ValueError(f"a user has {groups.max()} candidates; at most {MAX_GROUP_ROWS} per query")
    label = ordered["label"].cast(pl.Int32).to_numpy()
    if label.min() < 0:
        raise ValueError("labels must be >= 0")
    return _matrix(ordered, features), label, groups


# ----------------------------------------------------------------------------------------- ranker


class Ranker:
    """A trained LightGBM lambdarank model over :attr:`features` (immutable: updates make new rankers)."""

    def __init__(self, booster: Any, config: RankerConfig, train_info: Mapping[str, Any] | None = None) -> None:
        names = tuple(booster.feature_name())
        if names != tuple(config.features):
            raise ValueError(f"booster features {names} differ from config features {config.features}")
        self._booster = booster
        self.config = config
        self.train_info: dict[str, Any] = dict(train_info or {})
        self._path_tables: tuple[np.ndarray, np.ndarray, float] | None = None

    @property
    def features(self) -> tuple[str, ...]:
        return self.config.features

    @property
    def num_trees(self) -> int:
        return int(self._booster.num_trees())

    @property
    def booster(self) -> Any:
        """The underlying ``lightgbm.Booster`` (do not train it in place)."""
        return self._booster

    # ------------------------------------------------------------------------------ training

    @classmethod
    def fit(cls, train: pl.DataFrame, config: RankerConfig | None = None, base: Ranker | None = None) -> Ranker:
        """Train on ``train`` (user_id, label, features; any row order). ``base=None``: from scratch;
        otherwise a new ranker from ``base`` per ``config.update`` (the base is not modified)."""
        import lightgbm as lgb

        config = config or RankerConfig()
        if base is not None and tuple(base.features) != tuple(config.features):
            raise ValueError("config.features differ from the base ranker's; train from scratch (base=None)")
        t0 = time.perf_counter()
        X, y, groups = _training_arrays(train, config.features)
        params = config.params()
        info: dict[str, Any] = {"rows": int(len(y)), "queries": int(len(groups)), "positives": int(y.sum())}
        if base is None or (config.update == "continue" and base.num_trees + config.continue_rounds > config.max_trees):
            data = lgb.Dataset(X, y, group=groups, feature_name=list(config.features), params=params)
            booster = lgb.train(params, data, num_boost_round=config.rounds)
            info["mode"] = "scratch" if base is None else "scratch (base at max_trees)"
        elif config.update == "continue":
            data = lgb.Dataset(X, y, group=groups, feature_name=list(config.features), params=params)
            booster = lgb.train(params, data, num_boost_round=config.continue_rounds, init_model=base._booster)
            info["mode"] = "continue"
        else:
            booster = base._booster.refit(X, y, decay_rate=config.refit_decay_rate, group=groups,
                                          feature_name=list(config.features))
            info["mode"] = "refit"
        # Detach from the training Dataset (and from the base): the ranker holds a plain model.
        booster = lgb.Booster(model_str=booster.model_to_string(num_iteration=-1))
        info["base_trees"] = base.num_trees if base is not None else 0
        info["trees"] = int(booster.num_trees())
        info["seconds"] = round(time.perf_counter() - t0, 3)
        return cls(booster, config, info)

    # ------------------------------------------------------------------------------- scoring

    def score(self, frame: pl.DataFrame, chunk_rows: int = 1_000_000) -> np.ndarray:
        """Raw lambdarank score (float64, higher is better) per row, in ``frame``'s row order.
        Converted and predicted ``chunk_rows`` rows at a time (bounded memory)."""
        out = np.empty(frame.height, np.float64)
        for start in range(0, frame.height, chunk_rows):
            X = _matrix(frame.slice(start, chunk_rows), self.features)
            out[start:start + len(X)] = self._booster.predict(X, raw_score=True, num_threads=self.config.predict_threads)
        if frame.height == 0:
            _matrix(frame, self.features)  # still report missing columns
        return out

    def contributions(self, frame: pl.DataFrame, method: Literal["shap", "path"] = "shap",
                      chunk_rows: int = 200_000) -> np.ndarray:
        """rows x (features + 1): per-feature contributions, last column the bias; rows sum to the
        score. ``shap``: LightGBM TreeSHAP (``pred_contrib=True``); ``path``: path attribution."""
        if method not in ("shap", "path"):
            raise ValueError(f"method must be 'shap' or 'path', got {method!r}")
        n_f = len(self.features)
        out = np.empty((frame.height, n_f + 1), np.float64)
        if frame.height == 0:
            _matrix(frame, self.features)
        for start in range(0, frame.height, chunk_rows):
            X = _matrix(frame.slice(start, chunk_rows), self.features)
            out[start:start + len(X)] = self._contrib(X, method)
        return out

    def _contrib(self, X: np.ndarray, method: str) -> np.ndarray:
        threads = self.config.predict_threads
        if method == "shap":
            return np.asarray(self._booster.predict(X, pred_contrib=True, num_threads=threads), np.float64)
        from scipy import sparse  # a LightGBM dependency

        n_f = len(self.features)
        table, offsets, bias = self._path()
        leaves = np.asarray(self._booster.predict(X, pred_leaf=True, num_threads=threads), np.int64)
        leaves = leaves.reshape(len(X), -1) + offsets  # rows x trees -> row of `table`
        n, n_trees = leaves.shape
        # One-hot of each row's leaves (rows x all leaves) times the per-leaf path contributions.
        onehot = sparse.csr_matrix((np.ones(n * n_trees), leaves.ravel(), np.arange(0, n * n_trees + 1, n_trees)),
                                   shape=(n, len(table)))
        out = np.empty((n, n_f + 1), np.float64)
        out[:, :n_f] = onehot @ table
        out[:, n_f] = bias
        return out

    def _path(self) -> tuple[np.ndarray, np.ndarray, float]:
        """Per-leaf path contributions of every tree stacked (leaves x features), each tree's first
        leaf row, and the summed root expectations. Node expectations are recomputed from the
        leaves' values and training counts (so they stay consistent after a refit)."""
        if self._path_tables is not None:
            return self._path_tables
        n_f = len(self.features)
        rows: list[np.ndarray] = []
        offsets: list[int] = []
        bias = 0.0
        for tree in self._booster.dump_model()["tree_info"]:
            n_leaves = int(tree["num_leaves"])
            offsets.append(sum(len(r) for r in rows))
            table = np.zeros((n_leaves, n_f), np.float64)

            def expect(node: dict) -> tuple[float, float]:
                if "leaf_index" in node:
                    c = float(max(node.get("leaf_count", 0), 0))
                    node["_ev"], node["_n"] = float(node["leaf_value"]), c
                    return node["_ev"], c
                lv, lc = expect(node["left_child"])
                rv, rc = expect(node["right_child"])
                n = lc + rc
                node["_ev"] = (lv * lc + rv * rc) / n if n > 0 else 0.5 * (lv + rv)
                node["_n"] = n
                return node["_ev"], n

            def walk(node: dict, acc: np.ndarray) -> None:
                if "leaf_index" in node:
                    table[int(node["leaf_index"])] = acc
                    return
                f = int(node["split_feature"])
                for child in (node["left_child"], node["right_child"]):
                    step = acc.copy()
                    step[f] += child["_ev"] - node["_ev"]
                    walk(child, step)

            root = tree["tree_structure"]
            expect(root)
            bias += root["_ev"]
            walk(root, np.zeros(n_f, np.float64))
            rows.append(table)
        table = np.concatenate(rows) if rows else np.zeros((0, n_f), np.float64)
        self._path_tables = (table, np.asarray(offsets, np.int64), float(bias))
        return self._path_tables

    def explain(self, frame: pl.DataFrame, top: int = 1, method: Literal["shap", "path"] = "shap") -> list[str]:
        """One short reason per row of ``frame`` (in order): the ``top`` phrases with the largest
        positive summed contribution, joined by ", "; :data:`DEFAULT_REASON` if none is positive.
        Costly with ``method="shap"``: pass only the rows to publish."""
        if top < 1:
            raise ValueError("top must be >= 1")
        contrib = self.contributions(frame, method)
        if len(contrib) == 0:
            return []
        phrases: list[str] = []
        members: list[list[int]] = []
        for j, f in enumerate(self.features):
            if f in USER_ONLY_FEATURES:
                continue
            p = REASON_PHRASES.get(f, f)
            if p not in phrases:
                phrases.append(p)
                members.append([])
            members[phrases.index(p)].append(j)
        if not phrases:
            return [DEFAULT_REASON] * len(contrib)
        by_phrase = np.stack([contrib[:, m].sum(axis=1) for m in members], axis=1)
        n_top = min(top, len(phrases))
        order = np.argsort(-by_phrase, axis=1, kind="stable")[:, :n_top]
        positive = np.take_along_axis(by_phrase, order, axis=1) > 0
        names = dict(enumerate(phrases))
        chosen = pl.DataFrame({f"p{i}": np.where(positive[:, i], order[:, i], -1) for i in range(n_top)}).select(
            pl.all().replace_strict(names, default=None, return_dtype=pl.String))
        joined = chosen.select(pl.concat_str(pl.all(), separator=", ", ignore_nulls=True).alias("reason"))["reason"]
        return joined.replace("", DEFAULT_REASON).to_list()

    # --------------------------------------------------------------------------- persistence

    def save(self, folder: Path | str) -> list[Path]:
        """ranker.txt (LightGBM text model) + ranker.json in ``folder`` (created). Returns the paths."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        model = folder / MODEL_FILE
        model.write_text(self._booster.model_to_string(num_iteration=-1), encoding="utf-8")
        meta = folder / META_FILE
        meta.write_text(json.dumps({"format_version": FORMAT_VERSION, "features": list(self.features),
                                    "config": self.config.to_json(), "train_info": self.train_info},
                                   indent=1, sort_keys=True), encoding="utf-8")
        return [model, meta]

    @classmethod
    def load(cls, folder: Path | str) -> Ranker:
        import lightgbm as lgb

        folder = Path(folder)
        meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"unsupported ranker artifact format {meta.get('format_version')!r}")
        booster = lgb.Booster(model_str=(folder / MODEL_FILE).read_text(encoding="utf-8"))
        config = RankerConfig.from_json(meta["config"])
        if tuple(meta["features"]) != config.features:
            raise ValueError("ranker.json features disagree with its config")
        return cls(booster, config, meta.get("train_info"))
