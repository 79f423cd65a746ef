"""`dagster dev` as a child process, with its own DAGSTER_HOME and REC_PIPELINE_HOME, and a GraphQL
client for it: what the end-to-end test and the benchmarks under `dagster dev` drive (they run from a
checkout; nothing of this ships in the package)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import duckdb
import polars as pl

from rec_pipeline.core.ingest.event_files import write_events

ROOT = Path(__file__).resolve().parents[1]
T = TypeVar("T")


class DagsterDev:
    """`dagster dev -w workspace.yaml` on a free local port; `base` holds both homes and the log."""

    def __init__(self, base: Path, env: dict[str, str] | None = None):
        self.dagster_home, self.pipeline_home, self.log = base / "dagster_home", base / "home", base / "dagster_dev.log"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/graphql"
        self.env = os.environ | {"DAGSTER_HOME": str(self.dagster_home), "REC_PIPELINE_HOME": str(self.pipeline_home),
                                 **(env or {})}
        self.process: subprocess.Popen | None = None

    def start(self, timeout_s: float = 180) -> DagsterDev:
        """Start with the repository's dagster.yaml (pools, run limits) and wait until the code loads."""
        self.dagster_home.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / "dagster.yaml", self.dagster_home / "dagster.yaml")
        dagster = Path(sys.executable).parent / "dagster"
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [str(dagster), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(self.port)],
                cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for("the code location to load", self.location_loaded, timeout_s)
        return self

    def query(self, text: str, variables: dict | None = None) -> dict:
        body = json.dumps({"query": text, "variables": variables or {}}).encode()
        request = urllib.request.Request(self.url, data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            answer = json.loads(response.read())
        if "errors" in answer:
            raise RuntimeError(f"GraphQL errors: {answer['errors']}")
        return answer["data"]

    def location_loaded(self) -> bool:
        entries = self.query("{ workspaceOrError { ... on Workspace { locationEntries { loadStatus "
                             "locationOrLoadError { __typename ... on PythonError { message } } } } } }")
        [entry] = entries["workspaceOrError"]["locationEntries"]
        location = entry["locationOrLoadError"]  # None while loading, then the location or its load error
        if location is not None and location["__typename"] == "PythonError":
            raise RuntimeError(f"the code location failed to load: {location['message']}")
        return entry["loadStatus"] == "LOADED" and location is not None

    def drop(self, frame: pl.DataFrame, name: str) -> float:
        """Write events aside, then rename them into the landing folder (as an upstream system
        should); returns the time.time() of the rename."""
        landing = self.pipeline_home / "landing"
        landing.mkdir(parents=True, exist_ok=True)
        staged = write_events(frame, self.pipeline_home / f".staging-{name}")
        os.replace(staged, landing / name)
        return time.time()

    def serving_users(self) -> set[str]:
        path = self.pipeline_home / "serving.duckdb"
        if not path.exists():
            return set()
        with duckdb.connect(str(path), read_only=True) as con:
            return {row[0] for row in con.sql("SELECT DISTINCT user_id FROM recommendations").fetchall()}

    def stop(self, timeout_s: float = 60) -> int:
        """SIGINT to the process group (Ctrl-C); dagster dev then stops its children."""
        os.killpg(self.process.pid, signal.SIGINT)
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            raise

    def group_alive(self) -> bool:
        return bool(subprocess.run(["pgrep", "-g", str(self.process.pid)], capture_output=True, text=True).stdout)


def wait_for(what: str, probe: Callable[[], T], timeout_s: float, every_s: float = 2.0) -> T:
    """Poll `probe` until it returns something truthy; connection and lock errors count as not yet."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            value = probe()
        except (urllib.error.URLError, ConnectionError, duckdb.IOException):
            value = None
        if value:
            return value
        time.sleep(every_s)
    raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
