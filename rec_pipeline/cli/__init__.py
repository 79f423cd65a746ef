"""The `rec-pipeline` command line: `app` holds the commands, `runs` the in-process Dagster runs,
`session` the settings and error reporting, `console` the progress bars."""

from rec_pipeline.cli.app import app

__all__ = ["app"]
