"""How much can any model gain over popularity in the MovieLens replay (issue 5's quality target)?

Under the protocol of `../shared/DESIGN.md`, per batch, before learning it:
1. the share of evaluated users who have no history at all (nothing can personalize for them) and
   what decayed popularity, at several half-lives, scores for them and for the others;
2. a generous personalised ranker for the users with history: LightGBM lambdarank over the 150 most
   popular items they have not touched, with multi-window popularity, item age, genre affinity,
   user mainstreamness and sequence co-visitation features, trained on every earlier batch (eight
   warm-up batches included), never on the batch it ranks;
3. the overall NDCG@10 of that ranker for users with history plus the best popularity list for the
   others: a ceiling for the pipeline's architecture, to set against 1.10 x the best baseline.

    .venv/bin/python benchmarks/replay_headroom.py [--data ../shared/datasets/movielens-100k]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import lightgbm as lgb
import numpy as np
import polars as pl

from rec_pipeline.core.evaluation.movielens import load_movielens
from rec_pipeline.core.evaluation.replay import split, targets_and_seen
from rec_pipeline.core.evaluation.scoring import score_lists
from rec_pipeline.core.model.lists import popular_lists_from
from rec_pipeline.core.model.recommender import order_by_score

K, POOL, COVISIT_WINDOW, LAST_ITEMS = 10, 150, 5, 10
HALF_LIVES_DAYS = (1, 3, 7, 14, 30, 60, None)  # None: all history, undecayed
FEATURES = ("covisit", "pop_1d", "pop_7d", "pop_30d", "pop_all", "item_age_h", "trend", "genre_max", "genre_sum",
            "user_events", "user_idle_h", "pop_vs_user", "mean_value")


def decayed_popularity(history: pl.DataFrame, at, half_life_days: float | None) -> pl.DataFrame:
    age_days = (at - pl.col("ts")).dt.total_seconds() / 86_400
    weight = age_days.is_not_null().cast(pl.Float64) if half_life_days is None else 2.0 ** (-age_days / half_life_days)
    return (history.group_by("item_id").agg(score=weight.sum())
            .sort(["score", "item_id"], descending=[True, False]))


def item_features(history: pl.DataFrame, at) -> pl.DataFrame:
    age_days = (at - pl.col("ts")).dt.total_seconds() / 86_400
    return (history.group_by("item_id").agg(
        pop_1d=(2.0 ** -age_days).sum(), pop_7d=(2.0 ** (-age_days / 7)).sum(),
        pop_30d=(2.0 ** (-age_days / 30)).sum(), pop_all=pl.len(), first=pl.col("ts").min(),
        mean_value=pl.col("value").mean())
        .with_columns(item_age_h=(at - pl.col("first")).dt.total_hours(),
                      trend=(pl.col("pop_1d") + 1) / (pl.col("pop_7d") / 7 + 1)).drop("first"))


def covisitation(history: pl.DataFrame, users: pl.Series) -> pl.DataFrame:
    """[user_id, item_id, covisit]: how often the item was touched within COVISIT_WINDOW events of
    one of the user's last LAST_ITEMS items (by anyone), weighted 1/recency of that item."""
    seq = (history.sort("user_id", "ts", maintain_order=True)
           .with_columns(pos=pl.int_range(pl.len()).over("user_id")).select("user_id", "item_id", "pos"))
    pairs = pl.concat([seq.join(seq.with_columns(pos=pl.col("pos") - d), on=["user_id", "pos"])
                       .select(a="item_id", b="item_id_right") for d in range(1, COVISIT_WINDOW + 1)])
    pairs = pl.concat([pairs, pairs.select(a="b", b="a")]).group_by("a", "b").len()
    last = (seq.filter(pl.col("user_id").is_in(users.implode()))
            .with_columns(back=pl.col("pos").max().over("user_id") - pl.col("pos")).filter(pl.col("back") < LAST_ITEMS))
    return (last.join(pairs, left_on="item_id", right_on="a")
            .group_by("user_id", "b").agg(covisit=(pl.col("len") / (pl.col("back") + 1)).sum())
            .rename({"b": "item_id"}))


def ranking_rows(history: pl.DataFrame, batch: pl.DataFrame, genres: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(candidate rows with features and label, targets) for the batch's users who have history."""
    targets, seen = targets_and_seen(history, batch)
    targets = targets.filter(pl.col("user_id").is_in(history["user_id"].unique().implode()))
    users, at = targets["user_id"].unique(), batch["ts"].min()
    items = item_features(history, at)
    mine = history.filter(pl.col("user_id").is_in(users.implode()))
    genre_share = (mine.join(genres, on="item_id").group_by("user_id", "genre").len()
                   .with_columns(share=pl.col("len") / pl.col("len").sum().over("user_id")))
    user = (mine.join(items.select("item_id", "pop_all"), on="item_id").group_by("user_id")
            .agg(user_events=pl.len(), last=pl.col("ts").max(), user_pop=pl.col("pop_all").log().mean()))
    pool = items.sort("pop_7d", descending=True).head(POOL * 4).select("item_id")
    candidates = (users.to_frame().join(pool, how="cross").join(seen, on=["user_id", "item_id"], how="anti")
                  .filter(pl.int_range(pl.len()).over("user_id") < POOL))
    genre = (candidates.join(genres, on="item_id").join(genre_share, on=["user_id", "genre"], how="left")
             .group_by("user_id", "item_id").agg(genre_max=pl.col("share").max(), genre_sum=pl.col("share").sum()))
    rows = (candidates.join(items, on="item_id").join(genre, on=["user_id", "item_id"], how="left")
            .join(covisitation(history, users), on=["user_id", "item_id"], how="left").join(user, on="user_id")
            .with_columns(pl.col("covisit", "genre_max", "genre_sum").fill_null(0.0),
                          user_idle_h=(at - pl.col("last")).dt.total_hours(),
                          pop_vs_user=pl.col("pop_all").log() - pl.col("user_pop"))
            .join(targets.with_columns(label=pl.lit(1)), on=["user_id", "item_id"], how="left")
            .with_columns(pl.col("label").fill_null(0)).sort("user_id", "item_id"))
    return rows, targets


def fit(rows: pl.DataFrame):
    rows = rows.filter(pl.col("label").sum().over("user_id") > 0).sort("user_id", "item_id")
    groups = rows.group_by("user_id", maintain_order=True).len()["len"].to_numpy()
    params = dict(objective="lambdarank", num_leaves=15, min_data_in_leaf=50, learning_rate=0.05, verbose=-1,
                  num_threads=2, lambdarank_truncation_level=K + 3, seed=0)
    return lgb.train(params, lgb.Dataset(rows.select(FEATURES).to_numpy(), rows["label"].to_numpy(), group=groups), 150)


def top_k(rows: pl.DataFrame, score: np.ndarray) -> pl.DataFrame:
    return order_by_score(rows.select("user_id", "item_id").with_columns(score=pl.Series(score))).filter(
        pl.col("rank") <= K)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).parents[1] / "../shared/datasets/movielens-100k")
    args = parser.parse_args()
    data = load_movielens(args.data)
    events, n_items = data.events.sort("ts", maintain_order=True), data.events["item_id"].n_unique()
    genres = data.items.select("item_id", genre="categories").explode("genre")
    warm, batches = split(events, 0.5, 20)
    size = batches[0].height
    warm_batches = [warm.slice(warm.height - (8 - i) * size, size) for i in range(8)]
    history = warm.head(warm.height - 8 * size)
    training: list[pl.DataFrame] = []
    out: dict[str, list[float]] = {}

    def record(name: str, lists: pl.DataFrame, targets: pl.DataFrame) -> None:
        out.setdefault(name, []).append(score_lists(lists, targets, n_items, K).ndcg if targets.height else np.nan)

    for number, batch in enumerate([*warm_batches, *batches], start=1 - len(warm_batches)):
        rows, known_targets = ranking_rows(history, batch, genres)
        if number >= 1:
            targets, seen = targets_and_seen(history, batch)
            cold_targets = targets.join(known_targets, on="user_id", how="anti")
            users = targets["user_id"].unique().to_list()
            longest = seen.group_by("user_id").len()["len"].max() or 0
            out.setdefault("cold share", []).append(cold_targets["user_id"].n_unique() / len(users))
            for half_life in HALF_LIVES_DAYS:
                pool = decayed_popularity(history, batch["ts"].min(), half_life).head(K + longest)
                lists = popular_lists_from(pool, users, seen, K)
                label = f"popularity {half_life or 'all'}{'d' if half_life else ''}"
                for part, part_targets in (("all", targets), ("cold", cold_targets), ("with history", known_targets)):
                    record(f"{label} | {part}", lists, part_targets)
            model_lists = top_k(rows, fit(pl.concat(training)).predict(rows.select(FEATURES).to_numpy()))
            record("ranker | with history", model_lists, known_targets)
            best_cold = popular_lists_from(decayed_popularity(history, batch["ts"].min(), 7).head(K + longest),
                                           cold_targets["user_id"].unique().to_list(), seen, K)
            record("ranker + popularity 7d for cold | all", pl.concat([model_lists, best_cold.select(model_lists.columns)]),
                   targets)
        training.append(rows)
        history = pl.concat([history, batch])
    print(f"{args.data.name}: {len(batches)} batches of {size} events, K={K}; means over batches")
    for name, values in out.items():
        print(f"  {name:<45} {np.nanmean(values):.4f}")


if __name__ == "__main__":
    main()
