"""Expected failures: the ones a user can act on.

Every class here carries a message that says what went wrong and what to do; the command line
prints it as one line (exit status 1), and the Dagster layer turns it into a run failure with that
description. Anything else raised by rec_pipeline is a bug and keeps its traceback.
"""

from __future__ import annotations


class RecPipelineError(Exception):
    """An expected failure, reported in one line."""


class InputError(RecPipelineError, ValueError):
    """Bad input: an argument, a file, a setting or a key."""


class NotFoundError(RecPipelineError, LookupError):
    """A batch, a model version or a file that does not exist."""


class WarehouseLockedError(RecPipelineError):
    """Another process held the warehouse file for longer than the lock timeout."""


class ArtifactError(RecPipelineError):
    """A model artifact is missing, outside the models folder, or its files do not match the checksum."""


class FeatureConfigError(RecPipelineError):
    """The feature state was built with another config (weights, half-lives or epoch)."""
