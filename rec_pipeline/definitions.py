"""The Dagster code location: every module under `rec_pipeline/defs/` is loaded."""

from pathlib import Path

import dagster as dg


def load_definitions() -> dg.Definitions:
    """The same Definitions for the UI, the daemon and the CLI's in-process runs."""
    return dg.load_from_defs_folder(path_within_project=Path(__file__).parent)


@dg.definitions
def defs() -> dg.Definitions:
    return load_definitions()
