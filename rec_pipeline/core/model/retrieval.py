"""Online-trainable retrieval: matrix factorisation on implicit feedback, in plain Keras 3.

Model
    ``score(u, i) = <U_u, V_i> + b_i`` (user and item ``Embedding`` tables plus an item bias), trained
    with an **in-batch sampled softmax**: each batch of ``(user, item, weight)`` rows is a ``B x B``
    logit matrix whose diagonal holds the positives and whose other columns (the other rows' items)
    are the negatives. Two standard corrections: the logit of column ``j`` is reduced by ``log q_j``
    (``q_j`` = item ``j``'s share of the training rows; in-batch negatives are drawn by popularity,
    and without it the model learns popularity-*debiased* scores that lose to the popularity
    baseline on recall), and a column holding the row's own item ("accidental hit") is masked. Rows
    are sample-weighted (``weight`` normalised to mean 1), plus an L2 penalty on the rows in the batch.
    ``loss="bpr"`` (uniformly sampled negatives) is also available; on the tests' data the softmax
    ranks better and converges in fewer epochs (B-1 negatives per positive instead of a few).

Online updates
    :meth:`RetrievalModel.warm_start_fit` returns a NEW model (the champion is never mutated) that
    starts from this one's weights **and Adam state**: the vocabulary grows by appending unseen ids
    (old indices and old rows are copied bit-for-bit; new rows are drawn fresh), Adam's moments are
    copied for old rows and zero for new ones, and the step counter continues. The optimizer is a
    *lazy* Adam (``keras.optimizers.Adam`` with a sparse ``update_step``): only rows that occur in a
    batch are updated, so users and items absent from the refresh data keep their rows exactly.
    Feed it the new interactions plus ``replay`` (recent history; at most ``config.replay_size`` rows
    of it are sampled, against forgetting).

Expiry
    :meth:`RetrievalModel.expire` drops users / items last seen before a cutoff: their rows and their
    Adam state are deleted and the tables compacted (the surviving rows are unchanged, only their
    index moves). An expired user becomes unknown (popularity fallback); an expired item is no longer
    recommended; either gets a fresh row if it shows up again in a later warm start.

Unknown users
    ``score`` returns a NaN row and ``top_n`` a row of ``None`` ids / NaN scores for a user not in
    the vocabulary (``known(user_ids)`` gives the mask); the caller fills those from the popularity
    fallback. ``top_n`` also pads with ``None``/NaN when exclusions leave fewer than ``n`` items.

Inference is pure numpy (one matrix product per chunk of users plus ``argpartition``); TensorFlow is
only imported, lazily, by ``fit`` / ``warm_start_fit``. Artifacts: ``weights.npz`` (float32 arrays
and the Adam state; written with fixed zip timestamps, so equal models give equal bytes) plus
``vocab.json`` and ``config.json``; loaded with ``allow_pickle=False``.
"""

from __future__ import annotations

import io
import json
import time
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from rec_pipeline.core.ingest.contract import DEFAULT_EVENT_WEIGHTS

FORMAT_VERSION = 1
WEIGHTS_FILE, VOCAB_FILE, CONFIG_FILE = "weights.npz", "vocab.json", "config.json"
_TABLES = ("user_emb", "item_emb", "item_bias")
_LOSSES = ("softmax", "bpr")
_VOLATILE = ("seconds", "rows_per_s")  # train_info entries not written to the artifact


@dataclass(frozen=True)
class RetrievalConfig:
    dim: int = 32
    epochs: int = 5  # passes over the data in `fit`
    warm_epochs: int = 3  # passes over new + replay rows in `warm_start_fit`
    batch_size: int = 512
    learning_rate: float = 0.01
    replay_size: int = 50_000  # max rows of recent history mixed into each refresh
    l2: float = 0.1  # L2 penalty on the embedding rows of each batch (sum of squares / batch size)
    seed: int = 0
    loss: str = "softmax"  # "softmax" (in-batch sampled softmax) or "bpr"
    logq_correction: bool = True  # softmax only: subtract log(item frequency) from in-batch logits
    bpr_negatives: int = 4  # bpr only: uniform negatives per positive
    use_bias: bool = True  # item bias
    init_std: float = 0.1  # N(0, init_std) for new embedding rows
    weight_transform: str = "log1p"  # per (user, item) weight: "log1p" or "linear"
    event_weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_EVENT_WEIGHTS))

    def __post_init__(self) -> None:
        if self.dim < 1 or self.epochs < 0 or self.warm_epochs < 0 or self.batch_size < 2:
            raise ValueError("dim >= 1, epochs >= 0, warm_epochs >= 0 and batch_size >= 2 required")
        if self.loss not in _LOSSES:
            raise ValueError(f"loss must be one of {_LOSSES}, got {self.loss!r}")
        if self.weight_transform not in ("log1p", "linear"):
            raise ValueError("weight_transform must be 'log1p' or 'linear'")
        if self.learning_rate <= 0 or self.l2 < 0 or self.replay_size < 0 or self.bpr_negatives < 1:
            raise ValueError("learning_rate > 0, l2 >= 0, replay_size >= 0, bpr_negatives >= 1 required")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RetrievalConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def interactions_from_events(
    events: pl.DataFrame, event_weights: Mapping[str, float] | None = None
) -> pl.DataFrame:
    """Events (EVENT_SCHEMA) -> one row per (user_id, item_id): weight = sum of event weights,
    last_ts = latest event. Event types without a positive weight are dropped."""
    weights = dict(DEFAULT_EVENT_WEIGHTS if event_weights is None else event_weights)
    return (
        events.lazy()
        .with_columns(weight=pl.col("event_type").replace_strict(weights, default=0.0, return_dtype=pl.Float64))
        .filter(pl.col("weight") > 0)
        .group_by("user_id", "item_id")
        .agg(pl.col("weight").sum(), last_ts=pl.col("ts").max())
        .sort("user_id", "item_id")
        .collect()
    )


def last_seen(events: pl.DataFrame, column: str) -> pl.DataFrame:
    """``[column, last_seen]``: each user (or item) id's latest event ts, as input to `expire`."""
    return events.group_by(column).agg(last_seen=pl.col("ts").max()).sort(column)


# ------------------------------------------------------------------------------------------------ model


def _ids(values: Iterable[Any]) -> np.ndarray:
    return np.asarray([str(v) for v in values], dtype=object)


def _write_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Like np.savez, but with fixed zip timestamps so equal arrays give equal bytes (checksums)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for name in sorted(arrays):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asarray(arrays[name], order="C"), allow_pickle=False)
            zf.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)), buf.getvalue())


class RetrievalModel:
    """Immutable after construction: training methods return new models. See the module docstring."""

    def __init__(
        self,
        user_ids: Sequence[str] | np.ndarray,
        item_ids: Sequence[str] | np.ndarray,
        arrays: Mapping[str, np.ndarray],
        optimizer_state: Mapping[str, np.ndarray] | None = None,
        config: RetrievalConfig | None = None,
        train_info: Mapping[str, Any] | None = None,
    ):
        self._user_ids = _ids(user_ids)
        self._item_ids = _ids(item_ids)
        self.config = config or RetrievalConfig()
        self._arrays = {k: np.asarray(arrays[k], dtype=np.float32) for k in _TABLES}
        self._opt = {k: np.asarray(v) for k, v in (optimizer_state or {}).items()}
        self.train_info = dict(train_info or {})
        nu, ni = len(self._user_ids), len(self._item_ids)
        shapes = {"user_emb": (nu, None), "item_emb": (ni, None), "item_bias": (ni, 1)}
        for k, (rows, cols) in shapes.items():
            a = self._arrays[k]
            if a.ndim != 2 or a.shape[0] != rows or (cols is not None and a.shape[1] != cols):
                raise ValueError(f"{k} has shape {a.shape}, vocabulary size is {rows}")
        if self._arrays["user_emb"].shape[1] != self._arrays["item_emb"].shape[1]:
            raise ValueError("user and item embeddings differ in dimension")
        if len(set(self._user_ids)) != nu or len(set(self._item_ids)) != ni:
            raise ValueError("duplicate ids in the vocabulary")
        for v in self._arrays.values():
            v.setflags(write=False)
        self._user_index = {u: k for k, u in enumerate(self._user_ids)}
        self._item_index = {i: k for k, i in enumerate(self._item_ids)}

    # -------------------------------------------------------------------------------- vocabulary

    @property
    def user_ids(self) -> np.ndarray:
        return self._user_ids.copy()

    @property
    def item_ids(self) -> np.ndarray:
        return self._item_ids.copy()

    @property
    def weights(self) -> dict[str, np.ndarray]:
        """Read-only views of user_emb, item_emb, item_bias (row k belongs to user_ids/item_ids[k])."""
        return dict(self._arrays)

    @property
    def optimizer_state(self) -> dict[str, np.ndarray]:
        return {k: v.copy() for k, v in self._opt.items()}

    def known(self, user_ids: Sequence[str]) -> np.ndarray:
        return self._user_rows(user_ids) >= 0

    def _user_rows(self, user_ids: Iterable[Any]) -> np.ndarray:
        get = self._user_index.get
        return np.fromiter((get(str(u), -1) for u in user_ids), dtype=np.int64)

    # -------------------------------------------------------------------------------- training

    @classmethod
    def fit(cls, interactions: pl.DataFrame, config: RetrievalConfig | None = None) -> RetrievalModel:
        """Train from scratch on ``[user_id, item_id, weight]`` rows (weight optional, default 1)."""
        config = config or RetrievalConfig()
        data = _prepare(interactions)
        if data.height == 0:
            raise ValueError("no interactions to fit on")
        users = np.sort(data["user_id"].unique().to_numpy()).astype(object)
        items = np.sort(data["item_id"].unique().to_numpy()).astype(object)
        rng = np.random.default_rng([config.seed, 0])
        arrays = {
            "user_emb": rng.normal(0, config.init_std, (len(users), config.dim)).astype(np.float32),
            "item_emb": rng.normal(0, config.init_std, (len(items), config.dim)).astype(np.float32),
            "item_bias": np.zeros((len(items), 1), np.float32),
        }
        start = cls(users, items, arrays, None, config)
        return start._train(data, config, config.epochs, optimizer_state=None)

    def warm_start_fit(
        self, new: pl.DataFrame, replay: pl.DataFrame | None = None, config: RetrievalConfig | None = None
    ) -> RetrievalModel:
        """A NEW model: this one's weights and Adam state, grown by the unseen ids, trained for
        ``config.warm_epochs`` on ``new`` + up to ``config.replay_size`` rows sampled from ``replay``."""
        config = config or self.config
        if config.dim != self._arrays["user_emb"].shape[1]:
            raise ValueError("config.dim differs from the model's dimension")
        frames = [_prepare(new)]
        if replay is not None and replay.height and config.replay_size:
            rep = _prepare(replay)
            if rep.height > config.replay_size:
                rep = rep.sample(config.replay_size, seed=config.seed, shuffle=False)
            frames.append(rep)
        data = pl.concat(frames)
        grown = self._grow(data, config)
        if data.height == 0:
            return grown
        return grown._train(data, config, config.warm_epochs, optimizer_state=grown._opt)

    def _grow(self, data: pl.DataFrame, config: RetrievalConfig) -> RetrievalModel:
        """Append rows for unseen users/items (sorted); old rows and their Adam state copied as-is."""
        new_users = np.sort(np.setdiff1d(data["user_id"].unique().to_numpy().astype(str),
                                         self._user_ids.astype(str))).astype(object)
        new_items = np.sort(np.setdiff1d(data["item_id"].unique().to_numpy().astype(str),
                                         self._item_ids.astype(str))).astype(object)
        rng = np.random.default_rng([config.seed, 1, len(self._user_ids), len(self._item_ids)])
        dim = config.dim
        extra = {"user_emb": len(new_users), "item_emb": len(new_items), "item_bias": len(new_items)}
        arrays: dict[str, np.ndarray] = {}
        opt: dict[str, np.ndarray] = {"iterations": self._opt.get("iterations", np.zeros((), np.int64))}
        for k in _TABLES:
            old = self._arrays[k]
            if k == "item_bias":
                fresh = np.zeros((extra[k], 1), np.float32)
            else:
                fresh = rng.normal(0, config.init_std, (extra[k], dim)).astype(np.float32)
            arrays[k] = np.concatenate([old, fresh])
            for slot in ("m", "v"):
                prev = self._opt.get(f"{k}/{slot}", np.zeros_like(old))
                opt[f"{k}/{slot}"] = np.concatenate([prev, np.zeros((extra[k], old.shape[1]), np.float32)])
        return RetrievalModel(
            np.concatenate([self._user_ids, new_users]), np.concatenate([self._item_ids, new_items]),
            arrays, opt, config, self.train_info,
        )

    def _train(
        self, data: pl.DataFrame, config: RetrievalConfig, epochs: int,
        optimizer_state: Mapping[str, np.ndarray] | None,
    ) -> RetrievalModel:
        from rec_pipeline.core.model.keras_layers import LazyAdam, MFNet, keras, tf

        keras.utils.set_random_seed(config.seed)
        started = time.perf_counter()
        u = data["user_id"].replace_strict(self._user_index, return_dtype=pl.Int32).to_numpy()
        i = data["item_id"].replace_strict(self._item_index, return_dtype=pl.Int32).to_numpy()
        w = data["weight"].to_numpy().astype(np.float64)
        if config.weight_transform == "log1p":
            w = np.log1p(w)
        w = (w / w.mean()).astype(np.float32)
        counts = np.bincount(i, minlength=len(self._item_ids)).astype(np.float64)
        logq = np.log(counts[i] / len(i)).astype(np.float32)

        net = MFNet(len(self._user_ids), len(self._item_ids), config)
        for k, var in net.tables().items():
            var.assign(self._arrays[k])
        opt = LazyAdam(learning_rate=config.learning_rate)
        net.compile(optimizer=opt, jit_compile=False)
        trained = {k: v for k, v in net.tables().items() if config.use_bias or k != "item_bias"}
        opt.build(list(trained.values()))
        slots = {k: (opt._momentums[opt._get_variable_index(v)], opt._velocities[opt._get_variable_index(v)])
                 for k, v in trained.items()}
        if optimizer_state:
            opt.iterations.assign(int(optimizer_state["iterations"]))
            for k, (m, v) in slots.items():
                m.assign(optimizer_state[f"{k}/m"])
                v.assign(optimizer_state[f"{k}/v"])

        # The loop: one tf.function-compiled `train_step` per batch, batches from a seeded numpy
        # permutation per epoch (about 2x faster than `fit` over a shuffled tf.data pipeline here).
        spec = {k: tf.TensorSpec([None], tf.int32 if k in ("u", "i") else tf.float32) for k in ("u", "i", "w", "logq")}
        step = tf.function(net.train_step, input_signature=[spec], jit_compile=False)
        columns = {"u": u, "i": i, "w": w, "logq": logq}
        order_rng = np.random.default_rng([config.seed, 2])
        losses: list[float] = []
        for _ in range(epochs):
            net.loss_tracker.reset_state()
            perm = order_rng.permutation(len(u))
            for start in range(0, len(u), config.batch_size):
                idx = perm[start:start + config.batch_size]
                logs = step({k: v[idx] for k, v in columns.items()})
            losses.append(float(logs["loss"]))

        arrays = {k: np.asarray(var.numpy(), np.float32) for k, var in net.tables().items()}
        state: dict[str, np.ndarray] = {"iterations": np.asarray(int(opt.iterations.numpy()), np.int64)}
        for k in _TABLES:  # tables without optimizer slots (no bias) keep whatever state they had
            state[f"{k}/m"] = np.asarray((optimizer_state or {}).get(f"{k}/m", np.zeros_like(arrays[k])))
            state[f"{k}/v"] = np.asarray((optimizer_state or {}).get(f"{k}/v", np.zeros_like(arrays[k])))
        for k, (m, v) in slots.items():
            state[f"{k}/m"], state[f"{k}/v"] = m.numpy(), v.numpy()
        seconds = time.perf_counter() - started
        info = {
            "rows": int(len(u)), "epochs": int(epochs), "seconds": round(seconds, 3),
            "rows_per_s": round(len(u) * epochs / seconds, 1) if epochs else None,
            "loss": losses,
        }
        return RetrievalModel(self._user_ids, self._item_ids, arrays, state, config, info)

    # -------------------------------------------------------------------------------- expiry

    def expire(
        self,
        before: datetime,
        users_last_seen: Mapping[str, datetime] | pl.DataFrame | None = None,
        items_last_seen: Mapping[str, datetime] | pl.DataFrame | None = None,
    ) -> RetrievalModel:
        """A NEW model without the users/items whose last_seen < ``before`` (ids missing from the
        last-seen input are kept). A frame input is ``[id, last_seen]`` (first column = id)."""
        keep_u = ~np.isin(self._user_ids.astype(str), _stale(users_last_seen, before))
        keep_i = ~np.isin(self._item_ids.astype(str), _stale(items_last_seen, before))
        return self._subset(keep_u, keep_i, {"expired_users": int((~keep_u).sum()),
                                             "expired_items": int((~keep_i).sum())})

    def without_users(self, user_ids: Iterable[str]) -> RetrievalModel:
        """A NEW model with no row (embedding, optimizer state) for `user_ids` (a user forgotten)."""
        keep_u = ~np.isin(self._user_ids.astype(str), np.asarray(list(user_ids), dtype=str))
        return self._subset(keep_u, np.ones(len(self._item_ids), bool), {})

    def _subset(self, keep_u: np.ndarray, keep_i: np.ndarray, info: Mapping[str, Any]) -> RetrievalModel:
        keep = {"user_emb": keep_u, "item_emb": keep_i, "item_bias": keep_i}
        arrays = {k: self._arrays[k][keep[k]] for k in _TABLES}
        opt = {k: (v[keep[k.split("/")[0]]] if "/" in k else v) for k, v in self._opt.items()}
        return RetrievalModel(self._user_ids[keep_u], self._item_ids[keep_i], arrays, opt, self.config,
                              {**self.train_info, **info})

    # -------------------------------------------------------------------------------- inference

    def score(self, user_ids: Sequence[str]) -> np.ndarray:
        """float32 users x items (columns in `item_ids` order); NaN rows for unknown users."""
        rows = self._user_rows(user_ids)
        out = np.full((len(rows), len(self._item_ids)), np.nan, np.float32)
        ok = rows >= 0
        out[ok] = self._arrays["user_emb"][rows[ok]] @ self._arrays["item_emb"].T + self._arrays["item_bias"][:, 0]
        return out

    def pair_scores(self, user_ids: Sequence[str], item_ids: Sequence[str]) -> np.ndarray:
        """float32 score of each (user_ids[k], item_ids[k]) pair, as `score()`; NaN when either is unknown."""
        rows = self._user_rows(user_ids)
        get = self._item_index.get
        cols = np.fromiter((get(str(i), -1) for i in item_ids), dtype=np.int64, count=len(rows))
        out = np.full(len(rows), np.nan, np.float32)
        ok = (rows >= 0) & (cols >= 0)
        U, V, b = self._arrays["user_emb"], self._arrays["item_emb"], self._arrays["item_bias"][:, 0]
        out[ok] = np.einsum("ij,ij->i", U[rows[ok]], V[cols[ok]]) + b[cols[ok]]
        return out

    def top_n(
        self,
        user_ids: Sequence[str],
        n: int,
        exclude: Mapping[str, Iterable[str]] | pl.DataFrame | None = None,
        chunk_elements: int = 1 << 24,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(item ids: object array users x n, scores: float32 users x n), best first. Scores equal
        `score()`'s up to float32 rounding (BLAS may order the sums differently for another chunk
        shape); the same call on the same model is reproducible. Unknown users
        and slots left empty by exclusions hold None / NaN. ``exclude`` is {user_id: item_ids} or a
        ``[user_id, item_id]`` frame (item_id may be a list column). Users are scored in chunks of
        about ``chunk_elements`` scores (float32: 64 MB by default)."""
        rows = self._user_rows(user_ids)
        n_users, n_items = len(rows), len(self._item_ids)
        n_eff = min(n, n_items)
        ids_out = np.full((n_users, n), None, dtype=object)
        scores_out = np.full((n_users, n), np.nan, np.float32)
        if n_users == 0 or n_eff <= 0:
            return ids_out, scores_out
        ex_row, ex_col = self._exclusions(user_ids, exclude)
        known = np.flatnonzero(rows >= 0)
        U, V, b = self._arrays["user_emb"], self._arrays["item_emb"], self._arrays["item_bias"][:, 0]
        chunk = max(1, chunk_elements // max(n_items, 1))
        for start in range(0, len(known), chunk):
            pos = known[start:start + chunk]
            s = U[rows[pos]] @ V.T + b
            if len(ex_row):
                lo, hi = np.searchsorted(ex_row, [pos[0], pos[-1] + 1])
                sel_r, sel_c = ex_row[lo:hi], ex_col[lo:hi]
                local = np.searchsorted(pos, sel_r)
                hit = pos[np.minimum(local, len(pos) - 1)] == sel_r
                s[local[hit], sel_c[hit]] = -np.inf
            if n_eff < n_items:  # partition in place of negating: saves a chunk-sized copy
                part = np.argpartition(s, n_items - n_eff, axis=1)[:, n_items - n_eff:]
            else:
                part = np.broadcast_to(np.arange(n_items), (len(pos), n_items))
            ps = np.take_along_axis(s, part, 1)
            order = np.argsort(-ps, axis=1, kind="stable")
            top = np.take_along_axis(part, order, 1)
            top_s = np.take_along_axis(ps, order, 1)
            valid = np.isfinite(top_s)
            names = np.where(valid, self._item_ids[top], None)
            ids_out[pos, :n_eff] = names
            scores_out[pos, :n_eff] = np.where(valid, top_s, np.nan)
        return ids_out, scores_out

    def _exclusions(
        self, user_ids: Sequence[str], exclude: Mapping[str, Iterable[str]] | pl.DataFrame | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(positions in `user_ids`, item columns) to mask, sorted by position."""
        empty = (np.zeros(0, np.int64), np.zeros(0, np.int64))
        if exclude is None or len(exclude) == 0:
            return empty
        if isinstance(exclude, pl.DataFrame):
            pairs = exclude.select("user_id", "item_id")
            if isinstance(pairs.schema["item_id"], pl.List):
                pairs = pairs.explode("item_id")
            pairs = pairs.select(pl.col("user_id").cast(pl.String), pl.col("item_id").cast(pl.String))
        else:
            pairs = pl.DataFrame(
                {"user_id": [str(k) for k in exclude], "item_id": [[str(x) for x in v] for v in exclude.values()]},
                schema={"user_id": pl.String, "item_id": pl.List(pl.String)},
            ).explode("item_id")
        query = pl.DataFrame({"user_id": _ids(user_ids).astype(str), "pos": np.arange(len(user_ids))},
                             schema={"user_id": pl.String, "pos": pl.Int64})
        items = pl.DataFrame({"item_id": self._item_ids.astype(str), "col": np.arange(len(self._item_ids))},
                             schema={"item_id": pl.String, "col": pl.Int64})
        hits = pairs.join(query, on="user_id").join(items, on="item_id").sort("pos", "col")
        if hits.height == 0:
            return empty
        return hits["pos"].to_numpy(), hits["col"].to_numpy()

    # -------------------------------------------------------------------------------- persistence

    def save(self, folder: Path | str) -> list[Path]:
        """weights.npz + vocab.json + config.json in ``folder`` (created). Returns the paths."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        weights = folder / WEIGHTS_FILE
        _write_npz(weights, {**self._arrays, **{f"opt/{k}": v for k, v in self._opt.items()}})
        vocab = folder / VOCAB_FILE
        vocab.write_text(json.dumps({"user_ids": self._user_ids.astype(str).tolist(),
                                     "item_ids": self._item_ids.astype(str).tolist()}))
        cfg = folder / CONFIG_FILE
        info = {k: v for k, v in self.train_info.items() if k not in _VOLATILE}  # equal models, equal bytes
        cfg.write_text(json.dumps({"format_version": FORMAT_VERSION, "config": self.config.to_json(),
                                   "train_info": info}, indent=1, sort_keys=True))
        return [weights, vocab, cfg]

    @classmethod
    def load(cls, folder: Path | str) -> RetrievalModel:
        folder = Path(folder)
        meta = json.loads((folder / CONFIG_FILE).read_text())
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"unsupported retrieval artifact format {meta.get('format_version')!r}")
        vocab = json.loads((folder / VOCAB_FILE).read_text())
        with np.load(folder / WEIGHTS_FILE, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in _TABLES}
            opt = {k[4:]: npz[k] for k in npz.files if k.startswith("opt/")}
        return cls(vocab["user_ids"], vocab["item_ids"], arrays, opt,
                   RetrievalConfig.from_json(meta["config"]), meta.get("train_info"))


def _prepare(frame: pl.DataFrame) -> pl.DataFrame:
    """``[user_id, item_id, weight]`` as String/String/Float64, duplicates summed, sorted."""
    cols = [pl.col("user_id").cast(pl.String), pl.col("item_id").cast(pl.String)]
    cols.append(pl.col("weight").cast(pl.Float64) if "weight" in frame.columns else pl.lit(1.0).alias("weight"))
    out = (frame.select(cols).drop_nulls().filter(pl.col("weight") > 0)
           .group_by("user_id", "item_id").agg(pl.col("weight").sum()).sort("user_id", "item_id"))
    return out


def _stale(last: Mapping[str, datetime] | pl.DataFrame | None, before: datetime) -> np.ndarray:
    if last is None or len(last) == 0:
        return np.zeros(0, dtype=str)
    if isinstance(last, pl.DataFrame):
        frame = last.select(pl.col(last.columns[0]).cast(pl.String).alias("id"),
                            pl.col("last_seen" if "last_seen" in last.columns else last.columns[1]).alias("ts"))
    else:
        frame = pl.DataFrame({"id": [str(k) for k in last], "ts": list(last.values())})
    ts = frame["ts"]
    if isinstance(ts.dtype, pl.Datetime) and ts.dtype.time_zone is None:  # type: ignore[attr-defined]
        frame = frame.with_columns(pl.col("ts").dt.replace_time_zone("UTC"))
    cutoff = before if before.tzinfo else before.replace(tzinfo=timezone.utc)
    return frame.filter(pl.col("ts").dt.convert_time_zone("UTC") < cutoff)["id"].to_numpy().astype(str)
