"""A deterministic behaviour-event simulator with a ground-truth oracle: the embedded event source.

The world (all of it a pure function of :class:`SimulatorConfig`, no mutable state):

* **Catalogue**: ``n_items`` items in ``n_categories`` categories. An item's latent vector is its
  category centroid plus noise; its popularity follows a Zipf law (``zipf_exponent``) over a random
  ranking; its price is log-normal around a per-category level.
* **Users**: a latent taste that *drifts* in closed form,
  ``taste_u(t) = normalize(cos(w_u t + phi_u) a_u + sin(w_u t + phi_u) b_u)``, where ``a_u`` and ``b_u``
  lean to different categories, so a user's favourite categories rotate with period ≈
  ``drift_period_days``. Activity levels are heavy-tailed (log-normal).
* **Arrivals**: a fraction of users and items arrive uniformly over ``(start, start + arrival_days]``;
  no event references a user or item before its arrival.
* **Ground truth**: ``relevance(u, i, t) = sigmoid(affinity_scale * <taste_u(t), v_i>
  + popularity_weight * log(pop_i / pop_max) + relevance_bias + user_bias_u)``, and 0 for items not yet
  arrived at ``t``. :meth:`Simulator.relevance`, :meth:`Simulator.relevance_matrix` and
  :meth:`Simulator.top_items` expose it (the oracle).
* **Behaviour**: sessions start at a rate that gives about ``events_per_day`` events per day, with a
  diurnal cycle. A session's user is drawn by activity among arrived users; the session views
  up to Geometric(mean ``mean_views_per_session``) distinct items, drawn by softmax over available items
  of ``log pop_i + view_affinity * affinity_scale * <taste, v_i>`` (+ a novelty boost for fresh items;
  draws are with replacement plus spares, repeats dropped, so about 92% of the drawn view counts are realised).
  Each view may become a click (prob ``p_click * r``), a click an add_to_cart (``p_cart * r``), a cart
  a purchase (``p_purchase * r``), with ``r`` the true relevance at session start; a purchase is
  sometimes rated (``p_rating``) a few days later (``session_id`` null), the rating derived from ``r``.

Generation is vectorized with numpy over batches of sessions (the batch size depends only on the
config), and batches are merged into one stream sorted by ``(ts, generation order)``, so
``events(n)`` is the first ``n`` events of that infinite stream and chunked generation gives the very
same rows with bounded memory.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from rec_pipeline.core.ingest.contract import CATALOGUE_SCHEMA, EVENT_SCHEMA
from rec_pipeline.core.ingest.event_files import write_events

UTC = timezone.utc
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
EVENT_TYPES: tuple[str, ...] = ("view", "click", "add_to_cart", "purchase", "rating")
FILE_FORMATS: tuple[str, ...] = ("jsonl", "jsonl.gz", "csv", "csv.gz", "parquet")
DEVICE_CONTEXTS: tuple[str, ...] = ('{"device":"mobile"}', '{"device":"desktop"}', '{"device":"tablet"}')

_US_PER_S = 1_000_000
_US_PER_DAY = 86_400 * _US_PER_S
_VIEW, _CLICK, _CART, _PURCHASE, _RATING = range(5)
_ADJECTIVES = ("Classic", "Compact", "Deluxe", "Eco", "Essential", "Modern", "Pro", "Smart", "Ultra", "Vintage")
_NOUNS = ("Backpack", "Blender", "Camera", "Desk Lamp", "Headphones", "Jacket", "Kettle", "Novel", "Sneakers", "Watch")


@dataclass(frozen=True)
class SimulatorConfig:
    seed: int = 0
    n_users: int = 1000
    n_items: int = 500
    n_categories: int = 12
    latent_dim: int = 8
    start: datetime = field(default_factory=lambda: datetime(2026, 1, 1, tzinfo=UTC))
    events_per_day: float = 20_000.0  # sets the time span: n events cover about n / events_per_day days
    zipf_exponent: float = 1.1
    drift_period_days: float = 60.0  # full cycle of a user's taste rotation
    new_user_fraction: float = 0.3  # share of users arriving after start
    new_item_fraction: float = 0.2  # share of items arriving after start
    arrival_days: float = 30.0  # late users/items arrive uniformly over (start, start + arrival_days]
    mean_views_per_session: float = 5.0
    max_views_per_session: int = 30
    p_click: float = 0.6  # funnel step probabilities at relevance 1 (scaled by relevance)
    p_cart: float = 0.5
    p_purchase: float = 0.7
    p_rating: float = 0.3  # share of purchases rated later
    mean_rating_delay_days: float = 2.0
    affinity_scale: float = 6.0
    popularity_weight: float = 0.3
    relevance_bias: float = -3.0
    view_affinity: float = 1.0
    novelty_boost: float = 1.5  # extra view logit of a just-arrived item, decaying over novelty_days
    novelty_days: float = 7.0
    diurnal_amplitude: float = 0.5  # 0 = flat; activity peaks at 20:00 UTC
    context_null_rate: float = 0.1

    def __post_init__(self) -> None:
        if self.n_users < 1 or self.n_items < 1 or self.n_categories < 1 or self.latent_dim < 2:
            raise ValueError("n_users, n_items, n_categories must be >= 1 and latent_dim >= 2")
        if self.start.tzinfo is None:
            raise ValueError("start must be timezone-aware")
        if self.events_per_day <= 0 or self.drift_period_days <= 0 or self.arrival_days <= 0:
            raise ValueError("events_per_day, drift_period_days and arrival_days must be > 0")
        if self.mean_views_per_session < 1 or self.max_views_per_session < 1:
            raise ValueError("mean_views_per_session and max_views_per_session must be >= 1")
        for name in ("new_user_fraction", "new_item_fraction", "p_click", "p_cart", "p_purchase", "p_rating",
                     "context_null_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1]")
        if not 0.0 <= self.diurnal_amplitude < 1.0:
            raise ValueError("diurnal_amplitude must be in [0, 1)")


def _normalize(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _sample_rows(w: np.ndarray, block: int, rows: np.ndarray, u1: np.ndarray, u2: np.ndarray) -> np.ndarray:
    """For each k, a column drawn from row ``rows[k]`` of the weight matrix ``w`` with probability
    proportional to its weight (inverse CDF with uniforms ``u1``, ``u2``): first a block of ``block``
    columns, then a column inside it, so the cost is one pass of block sums over ``w``. A result
    ``>= w.shape[1]`` means a float edge case; drop it."""
    n_rows, n_cols = w.shape
    bcum = np.cumsum(w.reshape(n_rows, n_cols // block, block).sum(-1, dtype=np.float64), axis=1)[rows]
    blk = (bcum <= (u1 * bcum[:, -1])[:, None]).sum(1)
    blk_ok = np.minimum(blk, n_cols // block - 1)
    inner = np.cumsum(w.reshape(n_rows, n_cols // block, block)[rows, blk_ok], axis=1)
    pos = (inner <= (u2 * inner[:, -1])[:, None]).sum(1)
    return np.where((blk == blk_ok) & (pos < block), blk_ok * block + pos, n_cols)


def _to_us(at: Any, start_us: int) -> Any:
    """``at`` (an aware datetime, or a sequence/array/Series of datetimes) as microseconds since ``start``."""
    if isinstance(at, datetime):
        if at.tzinfo is None:
            raise ValueError("naive datetime: pass a timezone-aware one")
        return (at - _EPOCH) // timedelta(microseconds=1) - start_us
    series = at if isinstance(at, pl.Series) else pl.Series(at)
    if not isinstance(series.dtype, pl.Datetime):
        raise ValueError(f"at must be datetimes, got {series.dtype}")
    if series.dtype.time_zone is None:  # type: ignore[attr-defined]
        series = series.dt.replace_time_zone("UTC")
    return series.dt.cast_time_unit("us").to_physical().to_numpy().astype(np.int64) - start_us


class Simulator:
    """Deterministic (by ``config.seed``) event source plus the ground-truth relevance oracle."""

    def __init__(self, config: SimulatorConfig | None = None) -> None:
        self.config = cfg = config or SimulatorConfig()
        rng = np.random.default_rng([cfg.seed, 0x5EED])
        n_u, n_i, n_c, d = cfg.n_users, cfg.n_items, cfg.n_categories, cfg.latent_dim
        self._start_us = int(_to_us(cfg.start, 0))

        # Catalogue: category centroids, item vectors, Zipf popularity, prices, arrivals.
        centroids = _normalize(rng.standard_normal((n_c, d)))
        self._item_cat = rng.integers(0, n_c, n_i)
        self._item_vec = _normalize(centroids[self._item_cat] + 0.5 * rng.standard_normal((n_i, d)) / math.sqrt(d))
        rank = rng.permutation(n_i) + 1
        self._item_logpop = -cfg.zipf_exponent * np.log(rank)  # log(pop / pop_max), max 0
        cat_price = np.exp(rng.normal(math.log(30.0), 0.8, n_c))
        self._item_price = np.maximum(0.5, np.round(cat_price[self._item_cat] * np.exp(rng.normal(0, 0.4, n_i)), 2))
        self._item_arrival = self._arrivals(rng, n_i, cfg.new_item_fraction)
        self._item_fresh = self._item_arrival > 0
        # View sampling works on weight rows padded to whole blocks (see _sample_rows).
        self._block = 1 << max(3, math.ceil(math.log2(math.sqrt(n_i))))
        n_pad = -(-n_i // self._block) * self._block
        self._item_vec32 = np.pad(self._item_vec, ((0, n_pad - n_i), (0, 0))).astype(np.float32)

        # Users: two taste poles leaning to different categories, drift speed and phase, bias, activity.
        c1 = rng.integers(0, n_c, n_u)
        c2 = (c1 + rng.integers(1, max(n_c, 2), n_u)) % n_c
        noise = lambda: rng.standard_normal((n_u, d)) / math.sqrt(d)  # noqa: E731
        self._user_a = _normalize(centroids[c1] + 0.6 * noise())
        self._user_b = _normalize(centroids[c2] + 0.6 * noise())
        self._user_omega = 2 * math.pi / cfg.drift_period_days * np.exp(rng.normal(0, 0.3, n_u))  # rad/day
        self._user_phase = rng.uniform(0, 2 * math.pi, n_u)
        self._user_bias = rng.normal(0, 0.5, n_u)
        activity = np.exp(rng.normal(0, 1.0, n_u))
        self._user_arrival = self._arrivals(rng, n_u, cfg.new_user_fraction)
        self._user_order = np.argsort(self._user_arrival, kind="stable")
        self._user_arrival_sorted = self._user_arrival[self._user_order]
        self._user_cumw = np.cumsum(activity[self._user_order])

        uw, iw = max(6, len(str(n_u - 1))), max(5, len(str(n_i - 1)))
        self.user_ids: list[str] = [f"u{k:0{uw}d}" for k in range(n_u)]
        self.item_ids: list[str] = [f"i{k:0{iw}d}" for k in range(n_i)]
        self._user_index = {u: k for k, u in enumerate(self.user_ids)}
        self._item_index = {i: k for k, i in enumerate(self.item_ids)}
        self._user_series = pl.Series("user_id", self.user_ids, dtype=pl.String)
        self._item_series = pl.Series("item_id", self.item_ids, dtype=pl.String)

        # Diurnal time warp: activity time tau -> wall time t, with intensity 1 + A cos(2pi (t - 20h) / 1d).
        grid = np.linspace(0.0, 1.0, 2_881)  # days
        amp, peak = cfg.diurnal_amplitude, 20 / 24
        self._warp_t = grid
        self._warp_tau = grid + amp / (2 * math.pi) * (np.sin(2 * math.pi * (grid - peak)) + math.sin(2 * math.pi * peak))
        self._batch_sessions = int(np.clip(2_000_000 // n_i, 64, 4096))

    def _arrivals(self, rng: np.random.Generator, n: int, fraction: float) -> np.ndarray:
        """Arrival offsets (us since start): 0 for the initial population, uniform later for the rest."""
        n_new = min(int(round(fraction * n)), n - 1)
        late = np.zeros(n, dtype=bool)
        late[rng.permutation(n)[:n_new]] = True
        offsets = rng.uniform(0.0, self.config.arrival_days * _US_PER_DAY, n).astype(np.int64) + 1
        return np.where(late, offsets, 0).astype(np.int64)

    # ------------------------------------------------------------------ the oracle

    def _index(self, ids: Sequence[str] | str, index: dict[str, int], kind: str) -> np.ndarray:
        if isinstance(ids, str):
            ids = [ids]
        try:
            return np.fromiter((index[x] for x in ids), dtype=np.int64, count=len(ids))
        except KeyError as exc:
            raise KeyError(f"unknown {kind} id {exc.args[0]!r}") from None

    def _taste(self, users: np.ndarray, t_us: np.ndarray | int) -> np.ndarray:
        theta = self._user_omega[users] * (np.asarray(t_us, dtype=np.float64) / _US_PER_DAY) + self._user_phase[users]
        return _normalize(np.cos(theta)[:, None] * self._user_a[users] + np.sin(theta)[:, None] * self._user_b[users])

    def _score(self, dot: np.ndarray, users: np.ndarray, items: np.ndarray | slice) -> np.ndarray:
        cfg = self.config
        return (cfg.affinity_scale * dot + cfg.popularity_weight * self._item_logpop[items]
                + cfg.relevance_bias + self._user_bias[users])

    def relevance(self, user_ids: Sequence[str], item_ids: Sequence[str], at: Any) -> np.ndarray:
        """True relevance in [0, 1] of each (user_ids[k], item_ids[k]) pair at ``at``.

        ``at`` is one aware datetime or one per pair (sequence, numpy datetime64 array or Polars
        Series). Items not yet arrived at that time get 0.
        """
        users = self._index(user_ids, self._user_index, "user")
        items = self._index(item_ids, self._item_index, "item")
        if len(users) != len(items):
            raise ValueError("user_ids and item_ids must have the same length")
        t = _to_us(at, self._start_us)
        if not np.isscalar(t) and len(t) != len(users):  # type: ignore[arg-type]
            raise ValueError("at must be one datetime or one per pair")
        dot = np.einsum("kd,kd->k", self._taste(users, t), self._item_vec[items])
        rel = _sigmoid(self._score(dot, users, items))
        return np.where(self._item_arrival[items] <= t, rel, 0.0)

    def relevance_matrix(self, user_ids: Sequence[str], at: datetime) -> np.ndarray:
        """Relevance of each user (rows) to every item (columns, in ``item_ids`` order) at ``at``."""
        users = self._index(user_ids, self._user_index, "user")
        t = _to_us(at, self._start_us)
        dot = self._taste(users, t) @ self._item_vec.T
        rel = _sigmoid(self._score(dot, users[:, None], slice(None)))
        return np.where(self._item_arrival[None, :] <= t, rel, 0.0)

    def top_items(self, user_id: str, at: datetime, k: int = 10, exclude: Sequence[str] = ()) -> list[str]:
        """The oracle's best ``k`` items (arrived by ``at``, not in ``exclude``) for ``user_id``, best first."""
        rel = self.relevance_matrix([user_id], at)[0]
        rel[self._item_arrival > _to_us(at, self._start_us)] = -1.0
        if len(exclude):
            rel[self._index(list(exclude), self._item_index, "item")] = -1.0
        order = np.argsort(-rel, kind="stable")[:k]
        return [self.item_ids[j] for j in order if rel[j] >= 0.0]

    # ------------------------------------------------------------------ catalogue and users

    def _times(self, offsets_us: np.ndarray) -> pl.Series:
        return pl.Series(offsets_us + self._start_us, dtype=pl.Int64).cast(pl.Datetime("us", "UTC"))

    def catalogue(self) -> pl.DataFrame:
        """CATALOGUE_SCHEMA columns plus ``price`` (f64) and ``arrived_at`` (Datetime us UTC)."""
        cats = [f"cat{c:02d}" for c in self._item_cat]
        titles = [f"{_ADJECTIVES[(k * 7) % 10]} {_NOUNS[c % 10]} {k}" for k, c in enumerate(self._item_cat)]
        frame = pl.DataFrame(
            {"item_id": self.item_ids, "title": titles, "categories": [[c] for c in cats]},
            schema=CATALOGUE_SCHEMA,
        )
        return frame.with_columns(
            pl.Series("price", self._item_price, dtype=pl.Float64),
            self._times(self._item_arrival).alias("arrived_at"),
        )

    def users(self) -> pl.DataFrame:
        """``user_id`` and ``arrived_at`` of every simulated user."""
        return pl.DataFrame({"user_id": self._user_series, "arrived_at": self._times(self._user_arrival)})

    # ------------------------------------------------------------------ event generation

    def _wall(self, tau_days: np.ndarray) -> np.ndarray:
        """Activity time (days) -> wall time (us since start) under the diurnal warp."""
        whole = np.floor(tau_days)
        t = whole + np.interp(tau_days - whole, self._warp_tau, self._warp_t)
        return np.floor(t * _US_PER_DAY).astype(np.int64)

    def _batch(self, b: int, clock: float, events_per_session: float) -> tuple[dict[str, np.ndarray], float]:
        """Sessions of batch ``b``, starting after activity time ``clock`` (days): events and new clock."""
        cfg, S, n_items = self.config, self._batch_sessions, self.config.n_items
        rng = np.random.default_rng([cfg.seed, 1, b])
        gaps = rng.exponential(events_per_session / cfg.events_per_day, S)
        tau = clock + np.cumsum(gaps)
        t0 = self._wall(tau)  # session start, us since start
        # Session user: by activity among users arrived by t0.
        n_arr = np.maximum(np.searchsorted(self._user_arrival_sorted, t0, side="right"), 1)
        pick = np.searchsorted(self._user_cumw, rng.random(S) * self._user_cumw[n_arr - 1], side="right")
        users = self._user_order[np.minimum(pick, n_arr - 1)]
        n_views = np.minimum(rng.geometric(1.0 / cfg.mean_views_per_session, S), cfg.max_views_per_session)
        device = np.where(rng.random(S) < cfg.context_null_rate, -1, rng.choice(3, S, p=[0.58, 0.35, 0.07]))

        # Views: softmax over available items of log pop + affinity (+ novelty, evaluated at the batch's
        # middle), sampled by inverse CDF with replacement; repeats dropped, first n_views distinct kept.
        taste = self._taste(users, t0)
        w = (taste.astype(np.float32) * np.float32(cfg.view_affinity * cfg.affinity_scale)) @ self._item_vec32.T
        np.exp(w, out=w)
        age = (t0[S // 2] - self._item_arrival) / _US_PER_DAY
        novelty = np.where(self._item_fresh, cfg.novelty_boost * np.exp(-np.maximum(age, 0) / cfg.novelty_days), 0)
        weight = np.exp(self._item_logpop + novelty) * (self._item_arrival <= t0[-1])
        w *= np.pad(weight, (0, w.shape[1] - n_items)).astype(np.float32)  # padded columns weigh 0
        arriving = np.flatnonzero((self._item_arrival > t0[0]) & (self._item_arrival <= t0[-1]))
        if len(arriving):  # items arriving during the batch: available only to sessions after their arrival
            w[:, arriving] *= self._item_arrival[arriving][None, :] <= t0[:, None]
        d_sess = np.repeat(np.arange(S), n_views + n_views // 2 + 2)  # spare draws for repeats
        d_item = _sample_rows(w, self._block, d_sess, rng.random(len(d_sess)), rng.random(len(d_sess)))
        ok = d_item < n_items
        ok[ok] = w[d_sess[ok], d_item[ok]] > 0  # float edge cases only
        d_sess, d_item = d_sess[ok], d_item[ok]
        _, first_idx = np.unique(d_sess * n_items + d_item, return_index=True)
        keep = np.zeros(len(d_sess), bool)
        keep[first_idx] = True
        d_sess, d_item = d_sess[keep], d_item[keep]  # still session-major, in draw order
        rank = np.arange(len(d_sess)) - np.searchsorted(d_sess, d_sess, side="left")
        sel = rank < n_views[d_sess]
        v_sess, v_item = d_sess[sel], d_item[sel]
        v_user = users[v_sess]
        dot = np.einsum("kd,kd->k", taste[v_sess], self._item_vec[v_item])
        rel = _sigmoid(self._score(dot, v_user, v_item))
        # View times: session start + cumulative gaps within the session.
        g = 1.0 + rng.exponential(45.0, len(v_sess))
        cs = np.cumsum(g)
        first = np.r_[True, v_sess[1:] != v_sess[:-1]]
        base = np.maximum.accumulate(np.where(first, cs - g, 0.0))
        v_ts = t0[v_sess] + ((cs - base) * _US_PER_S).astype(np.int64)

        # Funnel: view -> click -> add_to_cart -> purchase -> (later) rating.
        u = rng.random((4, len(v_sess)))
        clicked = u[0] < cfg.p_click * rel
        carted = clicked & (u[1] < cfg.p_cart * rel)
        bought = carted & (u[2] < cfg.p_purchase * rel)
        rated = bought & (u[3] < cfg.p_rating)
        d_click = ((1.0 + rng.exponential(8.0, len(v_sess))) * _US_PER_S).astype(np.int64)
        d_cart = ((2.0 + rng.exponential(60.0, len(v_sess))) * _US_PER_S).astype(np.int64)
        d_buy = ((5.0 + rng.exponential(180.0, len(v_sess))) * _US_PER_S).astype(np.int64)
        d_rate = ((3600.0 + rng.exponential(cfg.mean_rating_delay_days * 86_400.0, len(v_sess))) * _US_PER_S).astype(np.int64)
        rating = np.clip(np.round(2 * (0.5 + 4.5 * rel + rng.normal(0, 0.6, len(v_sess)))) / 2, 0.5, 5.0)
        ts_click, ts_cart = v_ts + d_click, v_ts + d_click + d_cart
        ts_buy = ts_cart + d_buy
        price = self._item_price[v_item]

        masks = (np.ones(len(v_sess), bool), clicked, carted, bought, rated)
        ts = (v_ts, ts_click, ts_cart, ts_buy, ts_buy + d_rate)
        values = (np.nan, np.nan, price, price, rating)
        session_no = b * S + v_sess
        parts: dict[str, list[np.ndarray]] = {c: [] for c in ("ts", "user", "item", "etype", "value", "session", "device")}
        for etype, (m, t_e, val) in enumerate(zip(masks, ts, values)):
            parts["ts"].append(t_e[m])
            parts["user"].append(v_user[m])
            parts["item"].append(v_item[m])
            parts["etype"].append(np.full(int(m.sum()), etype, np.int8))
            parts["value"].append(np.broadcast_to(val, m.shape)[m].astype(np.float64))
            parts["session"].append(session_no[m] if etype != _RATING else np.full(int(m.sum()), -1, np.int64))
            parts["device"].append(device[v_sess][m] if etype != _RATING else np.full(int(m.sum()), -1, np.int64))
        return {c: np.concatenate(p) for c, p in parts.items()}, float(tau[-1])

    def _stream(self) -> Iterator[dict[str, np.ndarray]]:
        """The infinite event stream as numpy column blocks, globally sorted by (ts, generation order)."""
        cfg = self.config
        clock, eps = 0.0, cfg.mean_views_per_session * 1.3
        buffer: dict[str, np.ndarray] | None = None
        seq0 = 0
        for b in range(2**62):
            batch, clock = self._batch(b, clock, eps)
            n = len(batch["ts"])
            eps = 0.5 * eps + 0.5 * n / self._batch_sessions  # adapt the session rate to events_per_day
            batch["seq"] = np.arange(seq0, seq0 + n, dtype=np.int64)
            seq0 += n
            buffer = batch if buffer is None else {c: np.concatenate([buffer[c], batch[c]]) for c in batch}
            # Every later session starts at or after this wall time, so earlier events are final.
            boundary = int(self._wall(np.array([clock]))[0])
            ready = buffer["ts"] < boundary
            if ready.any():
                out = {c: a[ready] for c, a in buffer.items()}
                order = np.lexsort((out["seq"], out["ts"]))
                yield {c: a[order] for c, a in out.items()}
                buffer = {c: a[~ready] for c, a in buffer.items()}

    def _frame(self, block: dict[str, np.ndarray], first_row: int) -> pl.DataFrame:
        seed, n = self.config.seed, len(block["ts"])
        session = pl.Series("s", block["session"], dtype=pl.Int64)
        device = pl.Series("d", block["device"], dtype=pl.Int64)
        frame = pl.DataFrame({
            "row": pl.int_range(first_row, first_row + n, dtype=pl.Int64, eager=True),
            "user_id": self._user_series.gather(block["user"]),
            "item_id": self._item_series.gather(block["item"]),
            "event_type": pl.Series(EVENT_TYPES, dtype=pl.String).gather(block["etype"].astype(np.int64)),
            "ts": self._times(block["ts"]),
            "value": pl.Series(block["value"], dtype=pl.Float64).fill_nan(None),
            "s": session,
            "d": device,
        })
        return frame.select(
            pl.concat_str(pl.lit(f"sim{seed}-"), pl.col("row").cast(pl.String)).alias("event_id"),
            "user_id", "item_id", "event_type", "ts", "value",
            pl.when(pl.col("s") >= 0).then(pl.concat_str(pl.lit(f"sim{seed}-s"), pl.col("s").cast(pl.String)))
            .alias("session_id"),
            pl.when(pl.col("d") >= 0).then(pl.lit(pl.Series(DEVICE_CONTEXTS)).gather(pl.col("d").clip(0)))
            .alias("context"),
        )

    def iter_event_chunks(self, n_events: int, chunk_size: int = 100_000) -> Iterator[pl.DataFrame]:
        """The first ``n_events`` events as consecutive EVENT_SCHEMA frames of ``chunk_size`` rows (last shorter)."""
        if n_events < 0 or chunk_size < 1:
            raise ValueError("n_events must be >= 0 and chunk_size >= 1")
        pending: list[dict[str, np.ndarray]] = []
        have, emitted = 0, 0
        stream = self._stream()
        try:
            while emitted < n_events:
                want = min(chunk_size, n_events - emitted)
                while have < want:
                    block = next(stream)
                    pending.append(block)
                    have += len(block["ts"])
                merged = {c: np.concatenate([p[c] for p in pending]) for c in pending[0]}
                yield self._frame({c: a[:want] for c, a in merged.items()}, emitted)
                pending, have, emitted = [{c: a[want:] for c, a in merged.items()}], have - want, emitted + want
        finally:
            stream.close()

    def events(self, n_events: int) -> pl.DataFrame:
        """The first ``n_events`` events (EVENT_SCHEMA, sorted by ts)."""
        if n_events == 0:
            return pl.DataFrame(schema=EVENT_SCHEMA)
        return pl.concat(list(self.iter_event_chunks(n_events, chunk_size=n_events)), rechunk=True)

    def write_event_files(
        self, out_dir: Path, n_events: int, events_per_file: int = 10_000, fmt: str = "jsonl"
    ) -> list[Path]:
        """Write the first ``n_events`` events as ``events-s{seed}-00001.{fmt}``, ... (atomic writes)."""
        if fmt not in FILE_FORMATS:
            raise ValueError(f"fmt must be one of {FILE_FORMATS}, got {fmt!r}")
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        return [
            write_events(chunk, out_dir / f"events-s{self.config.seed}-{k:05d}.{fmt}")
            for k, chunk in enumerate(self.iter_event_chunks(n_events, events_per_file), start=1)
        ]
