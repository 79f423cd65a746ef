"""LightGBM scoring threads: 1 against all cores, in a process where Keras has just trained (as in a
refresh), alternated side by side.

Why it exists: training the ranker on 2 OpenMP threads next to TensorFlow was up to 50x slower than
on 1 (threads spin at every iteration's barrier), so `RankerConfig.num_threads` is 1. Scoring is one
parallel region per call; this measures whether `predict_threads=0` (all cores) is safe and faster.

Usage: python benchmarks/scoring_threads.py [--rows 1000000] [--trees 120] [--repeats 5] [--json]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from common import measured, print_provenance, print_report


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--trees", type=int, default=120)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    return parser.parse_args(argv)


def ranking_frame(n_users: int, n_cand: int, rng: np.random.Generator):
    """Candidates with every ranking feature (random values) and a label that depends on two of them."""
    import polars as pl

    from rec_pipeline.core.model.ranking import RANKING_FEATURES

    n = n_users * n_cand
    columns = {f: rng.lognormal(0.0, 1.0, n) for f in RANKING_FEATURES}
    logit = np.log(columns["item_trending"]) + np.log(columns["user_cat_share"]) - 2.0
    return pl.DataFrame({"user_id": np.repeat(np.arange(n_users), n_cand).astype(str), **columns,
                         "label": (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int32)})


def keras_fit() -> None:
    """A small retrieval fit, so TensorFlow's thread pools are up as they are in a refresh."""
    import polars as pl

    from rec_pipeline.core.model.retrieval import RetrievalModel

    users, items = np.arange(50_000) % 500, (np.arange(50_000) * 7) % 300
    RetrievalModel.fit(pl.DataFrame({"user_id": users.astype(str), "item_id": items.astype(str), "weight": 1.0}))


def run(args: argparse.Namespace) -> list[dict]:
    import dataclasses

    from rec_pipeline.core.model.ranking import Ranker, RankerConfig

    rng = np.random.default_rng(0)
    ranker = Ranker.fit(ranking_frame(2_000, 40, rng), RankerConfig(rounds=args.trees))
    candidates = ranking_frame(args.rows // 100, 100, rng)
    scorers = {threads: Ranker(ranker.booster, dataclasses.replace(ranker.config, predict_threads=threads))
               for threads in (1, 0)}
    keras_fit()
    seconds: dict[int, list[float]] = {threads: [] for threads in scorers}
    for _ in range(args.repeats):
        for threads, scorer in scorers.items():
            start = time.perf_counter()
            scorer.score(candidates)
            seconds[threads].append(time.perf_counter() - start)
    return [{"predict_threads": threads, "rows": candidates.height, "trees": ranker.num_trees,
             "median_s": statistics.median(values), "runs_s": values} for threads, values in seconds.items()]


def print_table(report: dict) -> None:
    print_provenance(report)
    one, every = report["results"]
    for r in report["results"]:
        label = "all cores" if r["predict_threads"] == 0 else f"{r['predict_threads']} thread"
        runs = ", ".join(f"{s:.2f}" for s in r["runs_s"])
        print(f"{label:>10}: median {r['median_s']:.2f} s for {r['rows']:,} rows x {r['trees']} trees (runs {runs})")
    print(f"all cores / 1 thread: {one['median_s'] / every['median_s']:.2f}x faster")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    print_report(measured(lambda: run(args)), print_table, args.json)


if __name__ == "__main__":
    main()
