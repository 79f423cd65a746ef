"""Retrieval MF (plain Keras 3): ranking quality, warm start and vocabulary growth, taste-shift
recovery, expiry, top-N with exclusions, save/load and determinism. Small data: well under 60 s."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timedelta, timezone

import numpy as np
import polars as pl
import pytest

from rec_pipeline.core.model.retrieval import (
    RetrievalConfig,
    RetrievalModel,
    interactions_from_events,
    last_seen,
)

N_GROUPS, N_USERS, N_ITEMS, PER_USER = 4, 1200, 600, 30
BLOCK = N_ITEMS // N_GROUPS
CONFIG = RetrievalConfig(seed=3)


def taste_groups(users: range, shift: int = 0, seed: int = 0, prefix: str = "u") -> pl.DataFrame:
    """User k is in group k % 4 and takes ~80% of its items from block (group + shift) % 4, Zipf-like
    inside the block, the rest uniformly from the catalogue."""
    rng = np.random.default_rng(seed)
    pop = 1.0 / np.arange(1, BLOCK + 1) ** 0.8
    pop /= pop.sum()
    uids, iids = [], []
    for k in users:
        block = (k % N_GROUPS + shift) % N_GROUPS
        own = rng.random(PER_USER) > 0.2
        items = np.unique(np.where(own, block * BLOCK + rng.choice(BLOCK, PER_USER, p=pop),
                                   rng.integers(0, N_ITEMS, PER_USER)))
        uids += [f"{prefix}{k}"] * len(items)
        iids += [f"i{x}" for x in items]
    return pl.DataFrame({"user_id": uids, "item_id": iids, "weight": np.ones(len(uids))})


def split(frame: pl.DataFrame, seed: int = 1, frac: float = 0.2) -> tuple[pl.DataFrame, pl.DataFrame]:
    test = pl.Series(np.random.default_rng(seed).random(frame.height) < frac)
    return frame.filter(~test), frame.filter(test)


def recall_at(recs: np.ndarray, users: list[str], test: pl.DataFrame, k: int = 10) -> float:
    truth = dict(test.group_by("user_id").agg(pl.col("item_id")).iter_rows())
    return float(np.mean([len(set(truth[u]) & set(r[:k])) / min(len(truth[u]), k) for u, r in zip(users, recs)]))


def popularity_recs(train: pl.DataFrame, users: list[str], k: int = 10) -> np.ndarray:
    ranked = train.group_by("item_id").len().sort(["len", "item_id"], descending=[True, False])["item_id"].to_list()
    seen = {u: set(items) for u, items in train.group_by("user_id").agg(pl.col("item_id")).iter_rows()}
    return np.array([[i for i in ranked if i not in seen.get(u, ())][:k] for u in users], dtype=object)


def evaluate(model: RetrievalModel, train: pl.DataFrame, test: pl.DataFrame) -> tuple[float, float]:
    users = sorted(test["user_id"].unique().to_list())
    recs, _ = model.top_n(users, 10, exclude=train.select("user_id", "item_id"))
    return recall_at(recs, users, test), recall_at(popularity_recs(train, users), users, test)


@pytest.fixture(scope="module")
def data() -> tuple[pl.DataFrame, pl.DataFrame]:
    return split(taste_groups(range(N_USERS)))


@pytest.fixture(scope="module")
def model(data: tuple[pl.DataFrame, pl.DataFrame]) -> RetrievalModel:
    return RetrievalModel.fit(data[0], CONFIG)


# ---------------------------------------------------------------------------------------- quality


def test_beats_popularity_on_held_out_interactions(model, data) -> None:
    train, test = data
    recall, pop = evaluate(model, train, test)
    assert recall > 0.15 and recall > 1.8 * pop, (recall, pop)
    assert model.train_info["loss"][-1] < model.train_info["loss"][0]
    assert len(model.user_ids) == N_USERS and len(model.item_ids) == train["item_id"].n_unique()


def test_module_import_does_not_import_tensorflow() -> None:
    code = ("import sys, rec_pipeline.core.model.retrieval as r; "
            "assert not {'tensorflow', 'keras', 'dagster'} & set(sys.modules), sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_same_seed_same_model_other_seed_differs(data, tmp_path) -> None:
    small = data[0].filter(pl.col("user_id").str.slice(1).cast(pl.Int64) < 300)
    config = RetrievalConfig(seed=11, epochs=2)
    a, b = RetrievalModel.fit(small, config), RetrievalModel.fit(small, config)
    c = RetrievalModel.fit(small, RetrievalConfig(seed=12, epochs=2))
    for k, v in a.weights.items():
        assert np.array_equal(v, b.weights[k]), k
    for k, v in a.optimizer_state.items():
        assert np.array_equal(v, b.optimizer_state[k]), k
    assert not np.array_equal(a.weights["user_emb"], c.weights["user_emb"])
    # and byte-identical artifacts (same checksum)
    assert [p.read_bytes() for p in a.save(tmp_path / "a")] == [p.read_bytes() for p in b.save(tmp_path / "b")]


# ---------------------------------------------------------------------------------------- warm start


def test_warm_start_grows_vocab_and_keeps_untouched_rows(model) -> None:
    before = {k: v.copy() for k, v in model.weights.items()}
    before_opt = model.optimizer_state
    touched_users = [f"u{k}" for k in range(0, 40)]
    new = pl.concat([
        taste_groups(range(0, 40), seed=5).filter(pl.col("item_id").str.slice(1).cast(pl.Int64) < BLOCK),
        pl.DataFrame({"user_id": ["new_b", "new_a", "new_a", "u1"], "item_id": ["i0", "i1", "zz_new", "zz_new"],
                      "weight": [1.0, 2.0, 1.0, 1.0]}),
    ])
    warm = model.warm_start_fit(new, replay=None, config=CONFIG)

    # champion untouched
    for k, v in model.weights.items():
        assert np.array_equal(v, before[k])
    # vocabulary: old ids first, in the same order, then the unseen ids (sorted)
    assert list(warm.user_ids) == list(model.user_ids) + ["new_a", "new_b"]
    assert list(warm.item_ids) == list(model.item_ids) + ["zz_new"]
    n_old_u, n_old_i = len(model.user_ids), len(model.item_ids)
    # untouched users / items: rows and Adam moments bit-for-bit identical
    untouched_u = ~np.isin(model.user_ids, touched_users)
    w_old, w_new = model.weights, warm.weights
    assert np.array_equal(w_new["user_emb"][:n_old_u][untouched_u], w_old["user_emb"][untouched_u])
    assert np.array_equal(warm.optimizer_state["user_emb/m"][:n_old_u][untouched_u],
                          before_opt["user_emb/m"][untouched_u])
    touched_i = np.isin(model.item_ids, new["item_id"].unique().to_list())
    for k in ("item_emb", "item_bias"):
        assert np.array_equal(w_new[k][:n_old_i][~touched_i], w_old[k][~touched_i])
    # touched rows did move; the step counter continued
    assert not np.array_equal(w_new["user_emb"][:40], w_old["user_emb"][:40])
    steps = int(warm.optimizer_state["iterations"]) - int(before_opt["iterations"])
    assert steps == CONFIG.warm_epochs * -(-new.height // CONFIG.batch_size)


def test_warm_start_carries_adam_state_bit_for_bit(model) -> None:
    grown = model.warm_start_fit(
        pl.DataFrame({"user_id": ["u0", "brand_new"], "item_id": ["never_seen", "i3"]}),
        config=RetrievalConfig(seed=3, warm_epochs=0),
    )
    old, new = model.optimizer_state, grown.optimizer_state
    assert int(new["iterations"]) == int(old["iterations"]) > 0
    for k in ("user_emb", "item_emb", "item_bias"):
        n = len(old[f"{k}/m"])
        for slot in ("m", "v"):
            assert np.array_equal(new[f"{k}/{slot}"][:n], old[f"{k}/{slot}"])
            assert not new[f"{k}/{slot}"][n:].any()  # new rows start with zero moments
        assert np.array_equal(grown.weights[k][:n], model.weights[k])


def test_warm_start_recovers_after_taste_shift(model, data) -> None:
    shifted_train, shifted_test = split(taste_groups(range(N_USERS), shift=1, seed=9), seed=2)
    fresh = shifted_train.filter(pl.col("user_id").str.slice(1).cast(pl.Int64) % 2 == 0)  # half the users
    fresh = fresh.filter(pl.Series(np.random.default_rng(4).random(fresh.height) < 0.5))  # half their events
    test = shifted_test.filter(pl.col("user_id").is_in(fresh["user_id"].unique().implode()))
    seen = pl.concat([data[0], fresh])

    warm = model.warm_start_fit(fresh, replay=data[0], config=CONFIG)
    recall_warm, _ = evaluate(warm, seen, test)
    recall_frozen, _ = evaluate(model, seen, test)
    assert recall_warm > 0.1 and recall_warm > 2 * recall_frozen, (recall_warm, recall_frozen)


# ---------------------------------------------------------------------------------------- inference


def test_top_n_matches_scores_and_never_returns_excluded(model, data) -> None:
    users = ["u0", "u1", "u2", "nobody", "u5"]
    exclude = {"u0": [f"i{k}" for k in range(BLOCK)], "u1": model.item_ids[:-3].tolist(), "u5": ["not_an_item"]}
    ids, scores = model.top_n(users, 10, exclude=exclude, chunk_elements=N_ITEMS * 2)  # 2 users per chunk
    full = model.score(users)

    assert ids.shape == scores.shape == (5, 10)
    assert not set(ids[0]) & set(exclude["u0"])
    assert set(ids[1][:3]) == set(model.item_ids[-3:]) and all(x is None for x in ids[1][3:])
    assert np.isnan(scores[1][3:]).all()
    assert all(x is None for x in ids[3]) and np.isnan(scores[3]).all() and np.isnan(full[3]).all()
    assert model.known(users).tolist() == [True, True, True, False, True]
    # u2 and u5 (no real exclusions): the 10 best columns of score(), best first (equal up to float32
    # rounding: BLAS may sum in another order for another chunk shape)
    cols = {item: k for k, item in enumerate(model.item_ids)}
    for row in (2, 4):
        best = np.argsort(-full[row], kind="stable")[:10]
        assert [cols[i] for i in ids[row]] == best.tolist()
        assert np.allclose(scores[row], full[row][best], rtol=1e-6, atol=1e-6)
        assert (np.diff(scores[row]) <= 0).all()
    # a frame and the dict give the same result; chunking does not change anything
    frame = pl.DataFrame({"user_id": ["u0"] * BLOCK, "item_id": exclude["u0"]})
    ids_f, scores_f = model.top_n(users, 10, exclude=frame)
    assert (ids_f[0] == ids[0]).all() and np.allclose(scores_f[0], scores[0], rtol=1e-6, atol=1e-6)
    ids_all, _ = model.top_n(model.user_ids, 10, exclude=data[0].select("user_id", "item_id"))
    train_pairs = set(data[0].select("user_id", "item_id").iter_rows())
    assert not any((u, i) in train_pairs for u, row in zip(model.user_ids, ids_all) for i in row)


def test_pair_scores_match_the_score_matrix_and_are_nan_for_unknown_ids(model) -> None:
    users, items = ["u0", "u3", "nobody", "u3"], [model.item_ids[5], model.item_ids[0], model.item_ids[0], "no_item"]
    pairs = model.pair_scores(users, items)
    full = model.score(["u0", "u3"])
    assert np.allclose(pairs[:2], [full[0][5], full[1][0]], rtol=1e-6, atol=1e-6)
    assert np.isnan(pairs[2:]).all()


def test_save_load_round_trips_scores_exactly(model, tmp_path) -> None:
    paths = model.save(tmp_path / "a")
    assert sorted(p.name for p in paths) == ["config.json", "vocab.json", "weights.npz"]
    with np.load(paths[0], allow_pickle=False) as npz:  # plain arrays only: no pickled objects
        assert all(npz[k].dtype != object for k in npz.files)
    loaded = RetrievalModel.load(tmp_path / "a")
    users = list(model.user_ids[:50]) + ["nobody"]
    assert np.array_equal(loaded.score(users), model.score(users), equal_nan=True)
    assert list(loaded.item_ids) == list(model.item_ids) and loaded.config == model.config
    for k, v in model.optimizer_state.items():
        assert np.array_equal(loaded.optimizer_state[k], v)
    # equal models give equal bytes (stable checksums)
    again = loaded.save(tmp_path / "b")
    assert [p.read_bytes() for p in paths] == [p.read_bytes() for p in again]


# ---------------------------------------------------------------------------------------- expiry & events


def test_expire_drops_stale_ids_and_keeps_the_rest(model) -> None:
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    users_seen = {"u0": t0, "u1": t0 + timedelta(days=10), "nobody": t0}
    items_seen = pl.DataFrame({"item_id": ["i0", "i1"], "last_seen": [t0, t0 + timedelta(days=10)]})
    pruned = model.expire(t0 + timedelta(days=5), users_last_seen=users_seen, items_last_seen=items_seen)
    assert "u0" not in pruned.user_ids and "u1" in pruned.user_ids
    assert "i0" not in pruned.item_ids and "i1" in pruned.item_ids
    assert len(pruned.user_ids) == len(model.user_ids) - 1 and len(pruned.item_ids) == len(model.item_ids) - 1
    # surviving rows are unchanged (looked up by id); the expired user falls back
    old_rows = {u: k for k, u in enumerate(model.user_ids)}
    k_new = list(pruned.user_ids).index("u7")
    assert np.array_equal(pruned.weights["user_emb"][k_new], model.weights["user_emb"][old_rows["u7"]])
    assert len(pruned.optimizer_state["user_emb/m"]) == len(pruned.user_ids)
    ids, _ = pruned.top_n(["u0", "u7"], 5)
    assert all(x is None for x in ids[0]) and "i0" not in set(ids[1])


def test_interactions_from_events_sums_event_weights() -> None:
    ts = datetime(2026, 1, 1, tzinfo=timezone.utc)
    events = pl.DataFrame({
        "user_id": ["a", "a", "a", "b"], "item_id": ["x", "x", "y", "x"],
        "event_type": ["view", "purchase", "unknown_type", "click"],
        "ts": [ts, ts + timedelta(hours=1), ts, ts],
    })
    out = interactions_from_events(events)
    assert out.select("user_id", "item_id", "weight").rows() == [("a", "x", 9.0), ("b", "x", 2.0)]
    assert out["last_ts"][0] == ts + timedelta(hours=1)
    assert last_seen(events, "user_id").rows() == [("a", ts + timedelta(hours=1)), ("b", ts)]


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        RetrievalConfig(loss="hinge")
    with pytest.raises(ValueError):
        RetrievalModel.fit(pl.DataFrame({"user_id": [], "item_id": []}, schema={"user_id": pl.String,
                                                                              "item_id": pl.String}))


def test_beats_popularity_on_simulator_time_split() -> None:
    from rec_pipeline.core.evaluation.simulator import Simulator, SimulatorConfig

    events = Simulator(SimulatorConfig(seed=5, n_users=1000, n_items=500, events_per_day=20_000)).events(100_000)
    cut = events["ts"].sort()[int(0.8 * events.height)]
    train = interactions_from_events(events.filter(pl.col("ts") < cut))
    test = (interactions_from_events(events.filter(pl.col("ts") >= cut))
            .join(train, on=["user_id", "item_id"], how="anti")  # new (user, item) pairs of known users
            .filter(pl.col("user_id").is_in(train["user_id"].unique().implode())))
    recall, pop = evaluate(RetrievalModel.fit(train, CONFIG), train, test)
    assert recall > 1.5 * pop, (recall, pop)
