"""Tests of the LightGBM ranker (rec_pipeline.core.model.ranking), on synthetic candidate sets only.

The generator draws, per user, ``n_cand`` candidates with every ranking feature; the label is a
Bernoulli draw whose logit depends on a few features (by default item_trending, user_cat_share and
ui_strength) plus noise, and retrieval_score is the utility buried in noise (weakly informative).
NDCG@10 uses rec_pipeline.core.metrics.ndcg_at_k (binary relevance, ideal over min(|pos|, 10)).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from rec_pipeline.core.evaluation.metrics import ndcg_at_k
from rec_pipeline.core.model.ranking import (
    DEFAULT_REASON,
    RANKING_FEATURES,
    REASON_PHRASES,
    Ranker,
    RankerConfig,
    _training_arrays,
    label_candidates,
)

EVENT_TYPES = ["view", "click", "add_to_cart", "purchase", "rating"]
BASE_WEIGHTS = {"item_trending": 1.2, "user_cat_share": 2.0, "ui_strength": 0.8}
FAST = RankerConfig(rounds=60, continue_rounds=20, num_threads=1)  # 1 thread: OpenMP spin-waits badly on a busy machine


def synthetic_candidates(
    n_users: int,
    n_cand: int = 40,
    seed: int = 0,
    weights: Mapping[str, float] = BASE_WEIGHTS,
    retrieval_signal: float = 0.3,
    bias: float = -3.2,
    user_prefix: str = "u",
) -> pl.DataFrame:
    """user_id, item_id, every RANKING_FEATURES column (ui_last_event_type as a string) and label.
    Utility = sum_f weights[f] * z(f) with z a standardised transform of the feature; P(label) =
    sigmoid(utility + bias + N(0, 1))."""
    rng = np.random.default_rng(seed)
    n = n_users * n_cand
    users = np.repeat(np.arange(n_users), n_cand)
    touched = rng.random(n) < 0.3
    ui_strength = np.where(touched, rng.exponential(1.0, n), 0.0)
    cols: dict[str, np.ndarray] = {
        "ui_strength": ui_strength,
        "ui_n_events": np.where(touched, 1 + rng.poisson(2.0, n), 0),
        "item_pop_1h": rng.lognormal(0.0, 1.0, n),
        "item_pop_1d": rng.lognormal(1.0, 1.0, n),
        "item_pop_7d": rng.lognormal(2.0, 1.0, n),
        "item_trending": rng.lognormal(0.0, 0.5, n),
        "item_n_events": rng.poisson(50, n),
        "item_n_users": rng.poisson(20, n),
        "item_age_hours": rng.uniform(0, 2000, n),
        "item_hours_since_last": rng.uniform(0, 100, n),
        "user_strength": rng.lognormal(1.0, 1.0, n_users)[users],
        "user_n_events": rng.poisson(30, n_users)[users],
        "user_n_items": rng.poisson(15, n_users)[users],
        "user_hours_since_last": rng.uniform(0, 200, n_users)[users],
        "user_age_hours": rng.uniform(0, 5000, n_users)[users],
        "user_cat_affinity": rng.exponential(1.0, n),
        "user_cat_share": rng.random(n),
    }
    z = {
        "item_trending": np.log(cols["item_trending"]) / 0.5,
        "user_cat_share": (cols["user_cat_share"] - 0.5) * np.sqrt(12),
        "ui_strength": (ui_strength - ui_strength.mean()) / ui_strength.std(),
        "item_pop_1d": (np.log(cols["item_pop_1d"]) - 1.0),
        "user_cat_affinity": cols["user_cat_affinity"] - 1.0,
    }
    utility = sum(w * z[f] for f, w in weights.items())
    label = (rng.random(n) < 1 / (1 + np.exp(-(utility + bias + rng.normal(0, 1, n))))).astype(np.int32)
    retrieval = retrieval_signal * utility + rng.normal(0, 1, n)
    frame = pl.DataFrame({
        "user_id": [f"{user_prefix}{u:05d}" for u in users],
        "item_id": [f"i{i}" for i in rng.integers(0, 10**9, n)],
        "retrieval_score": retrieval,
        **cols,
        "ui_hours_since_last": np.where(touched, rng.uniform(0, 500, n), np.nan),
        "ui_last_event_type": pl.Series(np.where(touched, rng.choice(EVENT_TYPES, n), None).tolist(), dtype=pl.String),
        "label": label,
    }).with_columns(
        pl.col("ui_hours_since_last").fill_nan(None),
        retrieval_rank=pl.col("retrieval_score").rank("ordinal", descending=True).over("user_id").cast(pl.Int32),
    )
    targets = frame.filter(pl.col("label") == 1).select("user_id", "item_id")
    return label_candidates(frame.drop("label"), targets)


def ndcg10(frame: pl.DataFrame, scores: np.ndarray) -> float:
    """Mean NDCG@10 over users; ``frame`` sorted by user with ``label``, equal-size groups."""
    sizes = frame.group_by("user_id", maintain_order=True).len()["len"].to_numpy()
    assert (sizes == sizes[0]).all() and frame["user_id"].is_sorted()
    s = np.asarray(scores).reshape(len(sizes), sizes[0])
    lab = frame["label"].to_numpy().reshape(s.shape)
    top = np.argsort(-s, axis=1, kind="stable")[:, :10]
    return float(np.nanmean(ndcg_at_k(top, [np.flatnonzero(r) for r in lab])))


@pytest.fixture(scope="module")
def train() -> pl.DataFrame:
    return synthetic_candidates(500, seed=1)


@pytest.fixture(scope="module")
def held_out() -> pl.DataFrame:
    return synthetic_candidates(400, seed=2, user_prefix="h")


@pytest.fixture(scope="module")
def ranker(train: pl.DataFrame) -> Ranker:
    return Ranker.fit(train, FAST)


# --------------------------------------------------------------------------------- labelling


def test_label_candidates_marks_sorts_and_drops_uninformative_users() -> None:
    cand = pl.DataFrame({
        "user_id": ["b", "a", "a", "b", "c", "c", "d", "a"],
        "item_id": ["x", "y", "x", "y", "x", "y", "x", "z"],
        "retrieval_rank": [2, 3, 1, 1, 1, 2, 1, 2],
        "retrieval_score": [0.5, 0.1, 0.9, 0.8, 0.9, 0.1, 0.3, 0.4],
    })
    # a: y is a target, w is a target retrieval missed (absent); b: x; c: none (dropped);
    # d: its only candidate is a target (no pair to rank: dropped). Duplicate target rows count once.
    targets = pl.DataFrame({"user_id": ["a", "a", "b", "d", "b"], "item_id": ["y", "w", "x", "x", "x"]})
    out = label_candidates(cand, targets)
    assert out.select("user_id", "item_id", "retrieval_rank", "label").rows() == [
        ("a", "x", 1, 0), ("a", "z", 2, 0), ("a", "y", 3, 1), ("b", "y", 1, 0), ("b", "x", 2, 1),
    ]
    assert out["label"].dtype == pl.Int32


def test_label_candidates_casts_target_ids_to_the_candidates_type() -> None:
    cand = pl.DataFrame({"user_id": [1, 1], "item_id": [10, 11], "retrieval_rank": [1, 2]})
    out = label_candidates(cand, pl.DataFrame({"user_id": ["1"], "item_id": ["11"]}))
    assert out["label"].to_list() == [0, 1]


# ---------------------------------------------------------------------------------- quality


def test_ranker_beats_retrieval_score_on_held_out_users(ranker: Ranker, held_out: pl.DataFrame) -> None:
    by_retrieval = ndcg10(held_out, held_out["retrieval_score"].to_numpy())
    by_ranker = ndcg10(held_out, ranker.score(held_out))
    assert by_ranker > by_retrieval + 0.05, (by_ranker, by_retrieval)
    assert ranker.train_info["mode"] == "scratch" and ranker.num_trees == FAST.rounds


def test_shuffled_labels_rank_worse_than_real_ones(
    ranker: Ranker, train: pl.DataFrame, held_out: pl.DataFrame
) -> None:
    shuffled = train.with_columns(pl.col("label").shuffle(seed=7))
    noise = Ranker.fit(shuffled, FAST)
    real, fake = ndcg10(held_out, ranker.score(held_out)), ndcg10(held_out, noise.score(held_out))
    assert real > fake + 0.1, (real, fake)


@pytest.mark.parametrize("update", ["continue", "refit"])
def test_update_returns_a_new_ranker_and_leaves_the_base_untouched(
    update: str, ranker: Ranker, held_out: pl.DataFrame
) -> None:
    batch = synthetic_candidates(300, seed=3, weights={"item_trending": 0.4, "user_cat_share": 2.0,
                                                       "item_pop_1d": 1.0})
    before = ranker.score(held_out)
    model_before = ranker.booster.model_to_string()
    cfg = RankerConfig(**{**FAST.to_json(), "update": update, "features": FAST.features})
    new = Ranker.fit(batch, cfg, base=ranker)
    assert new is not ranker and new.booster is not ranker.booster
    np.testing.assert_array_equal(ranker.score(held_out), before)
    assert ranker.booster.model_to_string() == model_before
    assert new.train_info["mode"] == update and new.train_info["base_trees"] == ranker.num_trees
    expected_trees = ranker.num_trees + (cfg.continue_rounds if update == "continue" else 0)
    assert new.num_trees == expected_trees
    assert not np.allclose(new.score(held_out), before)
    rows = held_out[:200]  # path attributions stay exact after a refit (node expectations recomputed)
    np.testing.assert_allclose(new.contributions(rows, "path").sum(axis=1), new.score(rows), rtol=1e-6, atol=1e-6)


def test_continue_starts_over_once_the_base_reaches_max_trees(ranker: Ranker, train: pl.DataFrame,
                                                               held_out: pl.DataFrame) -> None:
    capped = RankerConfig(**{**FAST.to_json(), "max_trees": ranker.num_trees + FAST.continue_rounds - 1,
                             "features": FAST.features})
    new = Ranker.fit(train, capped, base=ranker)
    assert new.train_info["mode"] == "scratch (base at max_trees)"
    assert new.num_trees == capped.rounds
    assert ndcg10(held_out, new.score(held_out)) > 0.5  # random order scores about 0.2


def test_update_rejects_a_different_feature_set(ranker: Ranker, train: pl.DataFrame) -> None:
    cfg = RankerConfig(num_threads=2, features=RANKING_FEATURES[:-1])
    with pytest.raises(ValueError, match="from scratch"):
        Ranker.fit(train, cfg, base=ranker)


# ------------------------------------------------------------------------------ row order


def test_groups_are_contiguous_when_the_input_is_shuffled(train: pl.DataFrame, ranker: Ranker) -> None:
    shuffled = train.sample(fraction=1.0, shuffle=True, seed=11)
    assert not shuffled["user_id"].is_sorted()
    X, y, groups = _training_arrays(shuffled, FAST.features)
    per_user = train.group_by("user_id").len().sort("user_id")["len"].to_numpy()
    np.testing.assert_array_equal(groups, per_user)
    assert groups.sum() == len(y) == len(X)
    # Same canonical order -> the same model as from the sorted frame.
    again = Ranker.fit(shuffled, FAST)
    assert again.booster.model_to_string() == ranker.booster.model_to_string()


def test_score_keeps_the_frame_row_order(ranker: Ranker, held_out: pl.DataFrame) -> None:
    perm = np.random.default_rng(0).permutation(held_out.height)
    np.testing.assert_array_equal(ranker.score(held_out[perm]), ranker.score(held_out)[perm])


# ---------------------------------------------------------------------------- persistence


def test_save_load_round_trips_scores_exactly(ranker: Ranker, held_out: pl.DataFrame, tmp_path: Path) -> None:
    paths = ranker.save(tmp_path / "r")
    assert sorted(p.name for p in paths) == ["ranker.json", "ranker.txt"]
    loaded = Ranker.load(tmp_path / "r")
    np.testing.assert_array_equal(loaded.score(held_out), ranker.score(held_out))
    assert loaded.config == ranker.config and loaded.train_info == ranker.train_info
    # A loaded champion can be updated both ways.
    batch = synthetic_candidates(100, seed=5)
    for update in ("continue", "refit"):
        cfg = RankerConfig(**{**FAST.to_json(), "update": update, "features": FAST.features})
        assert Ranker.fit(batch, cfg, base=loaded).score(held_out[:10]).shape == (10,)


# ---------------------------------------------------------------------------- explanations


@pytest.mark.parametrize("method", ["shap", "path"])
def test_contributions_sum_to_the_score(ranker: Ranker, held_out: pl.DataFrame, method: str) -> None:
    rows = held_out[:300]
    contrib = ranker.contributions(rows, method)
    assert contrib.shape == (300, len(ranker.features) + 1)
    np.testing.assert_allclose(contrib.sum(axis=1), ranker.score(rows), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("method", ["shap", "path"])
def test_explain_gives_one_phrase_per_row_naming_the_dominant_feature(method: str) -> None:
    data = synthetic_candidates(400, seed=21, weights={"item_trending": 3.0}, bias=-4.0)
    model = Ranker.fit(data, FAST)
    rows = data.filter(pl.col("retrieval_rank") <= 10)  # stand-in for the rows to publish
    top_rows = rows.with_columns(s=pl.Series(model.score(rows))).filter(
        pl.col("s").rank("ordinal", descending=True).over("user_id") <= 3)
    reasons = model.explain(top_rows, method=method)
    assert len(reasons) == top_rows.height and all(isinstance(r, str) and r for r in reasons)
    assert set(reasons) <= set(REASON_PHRASES.values()) | {DEFAULT_REASON}
    share = sum(r == "trending now" for r in reasons) / len(reasons)
    assert share > 0.8, share
    two = model.explain(top_rows[:20], top=2, method=method)
    assert all(r.startswith("trending now") for r, one in zip(two, reasons[:20]) if one == "trending now")
    assert model.explain(top_rows[:0]) == []


def test_explain_names_positive_item_side_phrases_only(ranker: Ranker, held_out: pl.DataFrame, monkeypatch) -> None:
    col = {f: j for j, f in enumerate(ranker.features)}
    contrib = np.full((3, len(ranker.features) + 1), -0.01)
    contrib[1, col["user_n_events"]] = 5.0  # user-only: the same for all of a user's items, never the reason
    contrib[2, col["item_trending"]], contrib[2, col["item_pop_1h"]] = 0.5, 0.4  # one phrase, summed: 0.9
    contrib[2, col["ui_strength"]] = 0.3
    monkeypatch.setattr(ranker, "contributions", lambda frame, method: contrib)
    assert ranker.explain(held_out[:3], top=2) == [
        DEFAULT_REASON, DEFAULT_REASON, "trending now, you engaged with it recently"]
    assert ranker.explain(held_out[:3])[2] == "trending now"


def test_score_requires_the_features_and_derives_the_event_type_weight(ranker: Ranker, held_out: pl.DataFrame) -> None:
    with pytest.raises(KeyError, match="item_trending"):
        ranker.score(held_out.drop("item_trending"))
    weights = held_out.with_columns(
        ui_last_event_weight=pl.col("ui_last_event_type").replace_strict(
            {"view": 1.0, "click": 2.0, "add_to_cart": 4.0, "purchase": 8.0, "rating": 5.0},
            default=pl.lit(None, pl.Float64), return_dtype=pl.Float64))
    np.testing.assert_array_equal(ranker.score(weights.drop("ui_last_event_type")), ranker.score(held_out))


def test_importing_the_module_does_not_import_lightgbm() -> None:
    code = "import sys, rec_pipeline.core.model.ranking; assert 'lightgbm' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_config_validation_and_json_round_trip() -> None:
    with pytest.raises(ValueError):
        RankerConfig(update="retrain")  # type: ignore[arg-type]
    cfg = RankerConfig(update="continue", seed=3)
    assert RankerConfig.from_json(cfg.to_json()) == cfg
    assert cfg.lambdarank_truncation_level == cfg.k + 3
