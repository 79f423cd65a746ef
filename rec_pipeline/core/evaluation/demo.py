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
    """The simulator's event stream for its seed, continued across commands: the next events are the
    ones after every event of this stream already in the warehouse (landed or quarantined)."""

    def __init__(self, simulator: Simulator):
        self.simulator = simulator
        self.prefix = f"sim{simulator.config.seed}-"

    def position(self, con: duckdb.DuckDBPyConnection) -> int:
        return con.execute(
            "SELECT (SELECT count(*) FROM events WHERE starts_with(event_id, $p))"
            " + (SELECT count(*) FROM events_rejected WHERE starts_with(event_id, $p))",
            {"p": self.prefix},
        ).fetchone()[0]

    def batches(self, start: int, count: int, size: int) -> Iterator[pl.DataFrame]:
        """`count` consecutive batches of `size` events from position `start`."""
        events = self.simulator.events(start + count * size).slice(start)
        return (events.slice(offset, size) for offset in range(0, count * size, size))

    def write_files(self, folder: Path, start: int, events: int, per_file: int) -> list[Path]:
        """The `events` events from position `start` as JSON Lines files of `per_file` events."""
        frame = self.simulator.events(start + events).slice(start)
        seed = self.simulator.config.seed
        return [write_events(frame.slice(offset, per_file), folder / f"sim-s{seed}-e{start + offset:010d}.jsonl")
                for offset in range(0, events, per_file)]


def run_demo(pipeline: OnlinePipeline, stream: SimulatedStream, start: int, batches: int, events_per_batch: int,
             history: pl.DataFrame, after_batch: Callable[[int, list[dict]], None] | None = None) -> list[dict]:
    """`batches` batches of the stream from `start`, scored (NDCG@10 and more, one row per batch and
    policy: champion, popularity, oracle) before `pipeline` learns each; `history` is what the
    pipeline had learnt before (its validated events), for the targets and exclusions."""
    policies = {"champion": pipeline, "popularity": PopularityFloor(pipeline), "oracle": Oracle(stream.simulator)}
    return score_then_learn(policies, stream.batches(start, batches, events_per_batch), DEMO_K,
                           len(stream.simulator.item_ids), history, after_batch)
