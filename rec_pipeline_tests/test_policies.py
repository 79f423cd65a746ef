"""The policy contract, River-style: every policy the replay, the demo and the drift benchmark
compare goes through the same checks. Lists hold at most K distinct items per user, never an item
the user touched, for the users asked; a policy never sees a batch before it is scored on it; two
fresh policies given the same events give the same lists."""

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import polars as pl
import pytest

from rec_pipeline.core.evaluation.policies import (
    IALS,
    LIST_SCHEMA,
    CountPopularity,
    FrozenModel,
    OnlinePipeline,
    Oracle,
    PipelineHome,
    Policy,
    PopularityFloor,
    score_then_learn,
    targets_and_seen,
)
from rec_pipeline.core.evaluation.simulator import Simulator, SimulatorConfig
from rec_pipeline.core.model.config import RefreshConfig
from rec_pipeline.core.model.ranking import RankerConfig
from rec_pipeline.core.model.retrieval import RetrievalConfig

K = 10
SIMULATOR = Simulator(SimulatorConfig(seed=5, n_users=150, n_items=120))
FAST = RefreshConfig(retrieval=RetrievalConfig(epochs=2, warm_epochs=1), ranker=RankerConfig(rounds=20),
                     ranker_users=200, eval_users=200)


@dataclass
class Subject:
    policy: Policy
    learners: list[Policy]  # what learns when the policy is taught (a frozen model's pipeline learns for it)

    def learn(self, batch: pl.DataFrame) -> None:
        for learner in self.learners:
            learner.learn(batch)


def pipeline(folder: Path, config: RefreshConfig = FAST) -> OnlinePipeline:
    return OnlinePipeline(PipelineHome.scratch(folder), config)


def alone(policy: Policy) -> Subject:
    return Subject(policy, [policy])


def beside_its_pipeline(make: Callable[[OnlinePipeline], Policy]) -> Callable[[Path], Subject]:
    def build(folder: Path) -> Subject:
        source = pipeline(folder)
        return Subject(make(source), [source])

    return build


SUBJECTS: dict[str, Callable[[Path], Subject]] = {
    "online": lambda folder: alone(pipeline(folder)),
    "full_retrain": lambda folder: alone(pipeline(folder, replace(FAST, from_scratch=True))),
    "static": beside_its_pipeline(FrozenModel),
    "popularity_floor": beside_its_pipeline(PopularityFloor),
    "popularity": lambda folder: alone(CountPopularity()),
    "recent_popularity": lambda folder: alone(CountPopularity(window_events=800)),
    "ials": lambda folder: alone(IALS()),
    "oracle": lambda folder: alone(Oracle(SIMULATOR)),
}


@pytest.fixture(scope="module")
def events() -> pl.DataFrame:
    return SIMULATOR.events(5_000)


def ask(subject: Subject, history: pl.DataFrame, batch: pl.DataFrame) -> tuple[pl.DataFrame, list[str], pl.DataFrame]:
    """Teach `history`, then ask for the lists of the batch's users with a new item."""
    subject.learn(history)
    targets, seen = targets_and_seen(history, batch)
    users = targets["user_id"].unique().sort().to_list()
    return subject.policy.lists(users, seen, batch["ts"].min(), K), users, seen


@pytest.mark.parametrize("name", SUBJECTS)
def test_lists_keep_the_contract_and_are_deterministic(name, events, tmp_path):
    history, batch = events.head(4_000), events.slice(4_000, 800)
    lists, users, seen = ask(SUBJECTS[name](tmp_path / "a"), history, batch)
    assert lists.schema == pl.Schema(LIST_SCHEMA)
    assert set(lists["user_id"]) == set(users), "every user asked gets a list, nobody else"
    per_user = lists.group_by("user_id").agg(n=pl.len(), items=pl.col("item_id").n_unique(),
                                             ranks=pl.col("rank").sort())
    assert per_user["n"].max() <= K and (per_user["n"] == per_user["items"]).all(), "at most K distinct items"
    assert all(ranks == list(range(1, len(ranks) + 1)) for ranks in per_user["ranks"].to_list()), "ranks 1..n"
    assert lists.join(seen, on=["user_id", "item_id"], how="semi").is_empty(), "no item the user touched"
    again, _, _ = ask(SUBJECTS[name](tmp_path / "b"), history, batch)
    assert again.sort("user_id", "rank").equals(lists.sort("user_id", "rank")), "same events, same lists"


@pytest.mark.parametrize("name", SUBJECTS)
def test_a_policy_is_scored_on_a_batch_before_it_learns_it(name, events, tmp_path):
    history, batches = events.head(3_000), [events.slice(3_000, 1_000), events.slice(4_000, 1_000)]
    subject = SUBJECTS[name](tmp_path)
    taught: list[pl.DataFrame] = []

    class Watched:
        learn_seconds = 0.0

        @staticmethod
        def learn(batch: pl.DataFrame) -> None:
            taught.append(batch)
            subject.learn(batch)

        @staticmethod
        def lists(users, seen, at, k):
            scored = batches[len(taught) - 1]  # the history, then one batch per round, was taught
            assert set(pl.concat(taught)["event_id"]).isdisjoint(scored["event_id"]), "scored before learnt"
            return subject.policy.lists(users, seen, at, k)

    Watched.learn(history)
    rows = score_then_learn({name: Watched()}, batches, K, len(SIMULATOR.item_ids), history)
    assert [row["batch"] for row in rows] == [1, 2] and len(taught) == 3
    assert all(0.0 <= row["ndcg"] <= 1.0 and row["users"] > 0 for row in rows)


def test_recent_popularity_counts_only_the_latest_window():
    events = pl.DataFrame({"user_id": ["a"] * 6, "item_id": ["old", "old", "old", "new", "new", "mid"]})
    recent, overall = CountPopularity(window_events=3), CountPopularity()
    for policy in (recent, overall):
        policy.learn(events)
    seen = pl.DataFrame(schema={"user_id": pl.String, "item_id": pl.String})
    assert recent.lists(["b"], seen, None, 2)["item_id"].to_list() == ["new", "mid"]
    assert overall.lists(["b"], seen, None, 2)["item_id"].to_list() == ["old", "new"]


def test_ials_falls_back_to_popularity_for_users_it_does_not_know(events):
    ials = IALS()
    ials.learn(events.head(3_000))
    known = events.head(3_000)["user_id"].unique().sort().head(5).to_list()
    seen = events.head(3_000).select("user_id", "item_id").unique()
    lists = ials.lists([*known, "u-never-seen"], seen, None, K)
    newcomer = lists.filter(pl.col("user_id") == "u-never-seen")["item_id"].to_list()
    assert newcomer == CountPopularity.lists(ials.popularity, ["u-never-seen"], seen, None, K)["item_id"].to_list()
    assert ials.learn_seconds > 0, "the fit is learning time"
