"""A run whose process is gone must not hold the warehouse.

Every step that opens the warehouse claims the one slot of the `warehouse` pool. A run killed with
SIGKILL (the command line's in-process run, or a run worker under `dagster dev`) never gives its
slot back, and Dagster cannot tell: the default run launcher has no worker health check, so run
monitoring leaves such a run STARTED forever, and every later step waits for the slot. Here a
holder is judged by its processes: the pids its engine events recorded ("Started process for run",
"Executing steps in process"). When none of them is alive on this machine, the run is marked
failed and its slots are freed. A holder that recorded no pid is left alone.

The pids are only meaningful where the run ran (read from Linux's /proc): this fits every process
on one machine (the default, `dagster dev`, and the command line). Runs on other machines (Celery
workers) are supervised by their own engine.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import dagster as dg

from rec_pipeline.defs.resources import WAREHOUSE_POOL

POLL_S = 1.0


@dataclass(frozen=True)
class Holder:
    run_id: str
    job_name: str
    pids: tuple[int, ...]

    def describe(self) -> str:
        pids = f", pid {', '.join(map(str, self.pids))}" if self.pids else ""
        return f"run {self.run_id} ({self.job_name}{pids})"


def release_dead_holders(instance: dg.DagsterInstance) -> list[Holder]:
    """Fail the runs holding a warehouse slot whose processes are all gone, and free their slots;
    free the slots of holders that already finished. Returns the holders still alive."""
    alive = []
    for run_id in _slot_holders(instance):
        run = instance.get_run_by_id(run_id)
        if run is None or run.is_finished:
            instance.event_log_storage.free_concurrency_slots_for_run(run_id)
            continue
        pids = _pids(instance, run_id)
        holder = Holder(run_id, run.job_name, tuple(sorted(pids)))
        if pids and not any(_is_alive(pid, logged_at) for pid, logged_at in pids.items()):
            instance.report_run_failed(run, f"its process is gone (pid {', '.join(map(str, holder.pids))}): "
                                            "freed its warehouse slot")
            instance.event_log_storage.free_concurrency_slots_for_run(run_id)
        else:
            alive.append(holder)
    return alive


def wait_for_the_warehouse(instance: dg.DagsterInstance, say: Callable[[str], None]) -> None:
    """Return once no live run holds the warehouse slot, saying once whom it waits for. A sleep, not
    a spin: Ctrl-C ends the wait."""
    if instance.is_ephemeral or not instance.event_log_storage.supports_global_concurrency_limits:
        return  # no other process shares this instance's slots
    waiting_for = None
    while holders := release_dead_holders(instance):
        if holders[0] != waiting_for:
            waiting_for = holders[0]
            say(f"waiting for the warehouse: {waiting_for.describe()} holds it (Ctrl-C stops waiting)")
        time.sleep(POLL_S)


def _slot_holders(instance: dg.DagsterInstance) -> set[str]:
    if WAREHOUSE_POOL not in instance.event_log_storage.get_concurrency_keys():
        return set()
    return instance.event_log_storage.get_concurrency_info(WAREHOUSE_POOL).active_run_ids


def _pids(instance: dg.DagsterInstance, run_id: str) -> dict[int, float]:
    """{pid: when the run logged it} for every process the run's engine events name."""
    pids = {}
    for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT):
        data = entry.dagster_event.event_specific_data if entry.dagster_event else None
        pid = getattr(data, "metadata", {}).get("pid") if data is not None else None
        if pid is not None and str(pid.value).isdigit():
            pids.setdefault(int(pid.value), entry.timestamp)
    return pids


def _is_alive(pid: int, logged_at: float) -> bool:
    """Whether the process that logged itself at `logged_at` still runs: a zombie does not, and
    neither does a newer process that was given the same pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    fields = stat.rsplit(")", 1)[1].split()  # after "pid (command)": state is first, starttime 20th
    started = _boot_time() + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    return fields[0] != "Z" and started <= logged_at + 1.0


@functools.cache
def _boot_time() -> float:
    return next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                if line.startswith("btime "))


def build_stale_run_sensor(status: dg.DefaultSensorStatus) -> dg.SensorDefinition:
    @dg.sensor(minimum_interval_seconds=15, default_status=status,
               description="Fails runs holding the warehouse slot whose process is gone (killed) and frees "
                           "the slot, so later runs do not wait forever.")
    def stale_warehouse_holders(context: dg.SensorEvaluationContext) -> dg.SkipReason:
        alive = release_dead_holders(context.instance)
        return dg.SkipReason(f"warehouse held by {alive[0].describe()}" if alive else "warehouse free")

    return stale_warehouse_holders
