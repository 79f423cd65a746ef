"""Pseudonymized user ids at landing.

With a key configured (`REC_PIPELINE_PSEUDONYMIZE_KEY`, or `REC_PIPELINE_PSEUDONYMIZE_KEY_FILE`: a
file holding it; read by `rec_pipeline.settings`), landing replaces every user id with
HMAC-SHA256(key, user id), as 32 hex digits (128 bits), before anything is written. Everything
downstream (features, models, the published lists, the serving database) only ever sees the
pseudonym. The raw text of rejected rows is not kept (it holds the raw id), and ids derived from an
event's content are computed from the pseudonym. The key is never written to the warehouse, the
serving database, Dagster's run config or the logs. Keep one key for a warehouse's whole life:
another key (or none) makes the same person a different user, so `verify_key` refuses both (the
warehouse keeps a check value of its key, never the key).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import duckdb

from rec_pipeline.core.errors import InputError

MIN_KEY_BYTES = 32
PSEUDONYM_HEX_DIGITS = 32
# What the check value is an HMAC of: a fixed message, so equal keys give equal check values.
_CHECK_MESSAGE = b"rec_pipeline: pseudonymization key check"
_SET_THE_KEY = "set REC_PIPELINE_PSEUDONYMIZE_KEY (or _KEY_FILE)"


class PseudonymizationKeyError(InputError):
    """The pseudonymization key is too short, missing, or not the one the warehouse's ids were hashed with."""


@dataclass(frozen=True)
class Pseudonymizer:
    key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.key) < MIN_KEY_BYTES:
            raise PseudonymizationKeyError(f"the pseudonymization key must be at least {MIN_KEY_BYTES} bytes")

    def __call__(self, user_id: str) -> str:
        return hmac.new(self.key, user_id.encode(), hashlib.sha256).hexdigest()[:PSEUDONYM_HEX_DIGITS]

    def check_value(self) -> str:
        """Tells this key from another without revealing it (HMAC-SHA256 of a fixed message)."""
        return hmac.new(self.key, _CHECK_MESSAGE, hashlib.sha256).hexdigest()


def verify_key(con: duckdb.DuckDBPyConnection, pseudonymizer: Pseudonymizer | None,
               now: datetime | None = None) -> None:
    """Refuse to work on the warehouse with the wrong key, with none when its ids were hashed, or
    with one when it already holds raw ids: each would make a known person a stranger (`forget`
    would find nothing of them, landing would split them into two users). The first keyed use of a
    warehouse records the key's check value (`pseudonymization_key`).

    A warehouse pseudonymized before check values were kept has none: its first keyed use adopts
    the key when every stored user id looks like a pseudonym (32 hex digits).
    """
    recorded = con.execute("SELECT check_value FROM pseudonymization_key").fetchall()
    if recorded:
        if pseudonymizer is None:
            raise PseudonymizationKeyError("this warehouse's user ids are pseudonymized and no key is set:"
                                           f" {_SET_THE_KEY} to the key they were hashed with")
        if not hmac.compare_digest(recorded[0][0], pseudonymizer.check_value()):
            raise PseudonymizationKeyError("the pseudonymization key is not the one this warehouse's user ids were"
                                           " hashed with")
        return
    if pseudonymizer is None:
        return
    if _holds_raw_user_ids(con):
        raise PseudonymizationKeyError("this warehouse holds user ids landed without a pseudonymization key; a key"
                                       " now would make each of those people a second user: unset it, or start a"
                                       " new REC_PIPELINE_HOME")
    con.execute("INSERT INTO pseudonymization_key VALUES (1, ?, ?)",
                [pseudonymizer.check_value(), now or datetime.now(timezone.utc)])


def _holds_raw_user_ids(con: duckdb.DuckDBPyConnection) -> bool:
    return con.execute(
        "SELECT count(*) > 0 FROM (SELECT user_id FROM events UNION ALL"
        "                          SELECT user_id FROM events_rejected WHERE user_id IS NOT NULL)"
        " WHERE NOT regexp_full_match(user_id, ?)", [f"[0-9a-f]{{{PSEUDONYM_HEX_DIGITS}}}"]).fetchall()[0][0]


def discard_imports(paths: Sequence[Path], pseudonymizer: Pseudonymizer | None) -> list[Path]:
    """With a key, the command line's own event files (simulated batches, a MovieLens conversion,
    in the imports folder) are deleted once landed, or refused: they hold the raw ids landing
    replaced, and their source can write them again. Without a key they are kept, as landed.
    Returns the files deleted."""
    if pseudonymizer is None:
        return []
    for path in paths:
        path.unlink(missing_ok=True)
    return list(paths)
