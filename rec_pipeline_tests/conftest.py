"""Shared fixtures: a throw-away warehouse or pipeline home, the Dagster definitions, a fixed clock,
a helper that writes input files and a local webhook endpoint."""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Callable
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from rec_pipeline.core.ops.warehouse import Warehouse

FIXED_NOW = datetime(2024, 6, 1, 12, 0, 0, tzinfo=timezone.utc)

# A shell without job control starts background commands (`.ci/run &`) with SIGINT ignored, and every
# child inherits that: the tests that stop `dagster dev` or a waiting command with Ctrl-C need it
# delivered, so the suite restores the default before it starts any.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture
def now() -> datetime:
    """The landing clock: contract.latest_ts(now) is 2024-06-02T12:00:00Z."""
    return FIXED_NOW


@pytest.fixture
def warehouse(tmp_path: Path) -> Warehouse:
    """An empty warehouse file in the test's tmp folder (migrated on first connect)."""
    return Warehouse(tmp_path / "w.duckdb", lock_timeout_s=5.0)


@pytest.fixture
def write_file(tmp_path: Path) -> Callable[[str, bytes | str], Path]:
    """write_file("a.jsonl", text_or_bytes) -> path; text is UTF-8 encoded with no newline translation."""
    folder = tmp_path / "files"
    folder.mkdir()

    def write(name: str, content: bytes | str) -> Path:
        path = folder / name
        path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
        return path

    return write


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """REC_PIPELINE_HOME for this test, with its landing folder."""
    monkeypatch.setenv("REC_PIPELINE_HOME", str(tmp_path / "home"))
    (tmp_path / "home" / "landing").mkdir(parents=True)
    return tmp_path / "home"


@pytest.fixture
def definitions(home: Path):
    """The code location's Definitions, as the UI loads them, on this test's home."""
    from rec_pipeline.definitions import build_definitions
    from rec_pipeline.settings import Settings

    return build_definitions(Settings.from_env())


@pytest.fixture
def webhook():
    """A local HTTP endpoint; yields (url, list of received JSON bodies)."""
    received = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/alerts", received
    server.shutdown()
