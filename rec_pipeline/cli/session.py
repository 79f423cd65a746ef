"""What one `rec-pipeline` command knows: its settings (read once, when it starts) and how it
reports a failure.

An expected failure (`RecPipelineError`: bad input, a missing batch or version, a locked
warehouse, a corrupt artifact, a feature-config mismatch, a failed run) is printed as one line,
exit status 1. Anything else is a bug: one short line names it and the file its full traceback was
written to, exit status 2; with `--debug` (or REC_PIPELINE_DEBUG=1) the traceback is printed too.
"""

from __future__ import annotations

import sys
import tempfile
import traceback
from datetime import datetime, timezone
from pathlib import Path

import typer
from dotenv import load_dotenv
from typer.core import TyperGroup
from typer.exceptions import TyperException

from rec_pipeline.core.errors import RecPipelineError
from rec_pipeline.core.model import tensorflow_logs
from rec_pipeline.settings import Settings

_current: Settings | None = None


def start(debug: bool) -> Settings:
    """Read this command's settings (a `.env` file in the working directory first, as `dagster dev`
    does) and apply `--debug`."""
    global _current
    load_dotenv(".env", override=False)
    _current = Settings.from_env()
    if debug:
        _current = _current.model_copy(update={"debug": True})
    tensorflow_logs.SHOW = _current.debug
    return _current


def settings() -> Settings:
    """The settings `start` read (a command run without the group's callback reads them now)."""
    return _current if _current is not None else start(debug=False)


class ReportingGroup(TyperGroup):
    """Runs a command and reports its failure as described in the module docstring."""

    def invoke(self, ctx: typer.Context):
        global _current
        _current = None
        try:
            return super().invoke(ctx)
        except (TyperException, typer.Exit, typer.Abort):
            raise
        except RecPipelineError as error:
            print(f"rec-pipeline: {error}", file=sys.stderr)
            if _current is not None and _current.debug:
                traceback.print_exception(error, file=sys.stderr)
            raise typer.Exit(1) from None
        except Exception as error:  # a bug: keep everything needed to find it
            log = _write_traceback(error)
            debug = _current is not None and _current.debug
            if debug:
                traceback.print_exception(error, file=sys.stderr)
            print(f"rec-pipeline: unexpected {type(error).__name__}: {_first_line(error)}"
                  f" (traceback in {log}{'' if debug else '; --debug prints it'})", file=sys.stderr)
            raise typer.Exit(2) from None


def _write_traceback(error: BaseException) -> Path:
    folder = _current.logs_dir if _current is not None else Path(tempfile.gettempdir())
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        folder = Path(tempfile.gettempdir())
    log = folder / f"error-{datetime.now(timezone.utc):%Y%m%dT%H%M%S%f}.log"
    log.write_text("".join(traceback.format_exception(error)))
    return log


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else "(no message)"
