"""TensorFlow prints start-up logs on stderr (oneDNN notices, "Could not find cuda drivers", a
CUDA error on a machine without a GPU) before its own log settings apply, so environment variables
cannot hide them; they read as errors to a user. They are silenced at the file-descriptor level
while TensorFlow is imported, unless `SHOW` is set (the command line's `--debug`)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

SHOW = False


@contextmanager
def quiet() -> Iterator[None]:
    """Standard error goes nowhere inside the block, unless `SHOW`."""
    if SHOW:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
