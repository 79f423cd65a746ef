"""The demo: the online loop over simulated events, batch by batch, measured test-then-train. Before
the pipeline learns a batch, its champion, the popularity floor and the simulator's oracle rank
what the batch's users went on to do; then the batch is landed and a refresh learns it. The
simulated stream continues across commands (`SimulatedStream`), as `rec-pipeline run` does."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import duckdb
import polars as pl

from rec_pipeline.core.evaluation.policies import (
    OnlinePipeline,
    Oracle,
    PopularityFloor,
    score_then_learn,
)
from rec_pipeline.core.evaluation.simulator import Simulator
from rec_pipeline.core.ingest.event_files import write_events

DEMO_K = 10


class SimulatedStream:
    """The simulator's event stream for its seed, continued across commands from the position the
    warehouse records (`simulation_streams`), not from what it holds: events a `forget` removed are
    never generated again."""

    def __init__(self, simulator: Simulator):
        self.simulator = simulator
        self.seed = simulator.config.seed

    def position(self, con: duckdb.DuckDBPyConnection) -> int:
        rows = con.execute("SELECT next_event FROM simulation_streams WHERE seed = ?", [self.seed]).fetchall()
        return rows[0][0] if rows else 0

    def advance(self, con: duckdb.DuckDBPyConnection, to: int) -> None:
        """Record that the events before `to` were landed (called after landing them: a crash in
        between makes the next command generate them again, and they land as duplicates)."""
        con.execute("INSERT INTO simulation_streams VALUES (?, ?) ON CONFLICT (seed) DO UPDATE"
                    " SET next_event = greatest(simulation_streams.next_event, excluded.next_event)",
                    [self.seed, to])

    def batches(self, start: int, count: int, size: int) -> Iterator[pl.DataFrame]:
        """`count` consecutive batches of `size` events from position `start`."""
        events = self.simulator.events(start + count * size).slice(start)
        return (events.slice(offset, size) for offset in range(0, count * size, size))

    def write_files(self, folder: Path, start: int, events: int, per_file: int) -> list[Path]:
        """The `events` events from position `start` as JSON Lines files of `per_file` events."""
        frame = self.simulator.events(start + events).slice(start)
        return [write_events(frame.slice(offset, per_file), folder / f"sim-s{self.seed}-e{start + offset:010d}.jsonl")
                for offset in range(0, events, per_file)]


def run_demo(pipeline: OnlinePipeline, stream: SimulatedStream, start: int, batches: int, events_per_batch: int,
             history: pl.DataFrame, after_batch: Callable[[int, list[dict]], None] | None = None) -> list[dict]:
    """`batches` batches of the stream from `start`, scored (NDCG@10 and more, one row per batch and
    policy: champion, popularity, oracle) before `pipeline` learns each; `history` is what the
    pipeline had learnt before (its validated events), for the targets and exclusions."""
    policies = {"champion": pipeline, "popularity": PopularityFloor(pipeline), "oracle": Oracle(stream.simulator)}
    return score_then_learn(policies, stream.batches(start, batches, events_per_batch), DEMO_K,
                           len(stream.simulator.item_ids), history, after_batch)
