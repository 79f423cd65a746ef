"""Pseudonymized user ids at landing.

With a key configured (`REC_PIPELINE_PSEUDONYMIZE_KEY`, or `REC_PIPELINE_PSEUDONYMIZE_KEY_FILE`: a
file holding it; read by `rec_pipeline.settings`), landing replaces every user id with HMAC-SHA256(key, user id), as 32 hex
digits (128 bits), before anything is written. Everything downstream (features, models, the
published lists, the serving database) only ever sees the pseudonym. The raw text of rejected rows
is not kept (it holds the raw id), and ids derived from an event's content are computed from the
pseudonym. The key is never written to the warehouse, the serving database, Dagster's run config or the logs. Keep one key for a warehouse's
whole life: another key (or none) makes the same person a different user.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field

from rec_pipeline.core.errors import InputError

MIN_KEY_BYTES = 32
PSEUDONYM_HEX_DIGITS = 32


class PseudonymizationKeyError(InputError):
    """The pseudonymization key is too short."""


@dataclass(frozen=True)
class Pseudonymizer:
    key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.key) < MIN_KEY_BYTES:
            raise PseudonymizationKeyError(f"the pseudonymization key must be at least {MIN_KEY_BYTES} bytes")

    def __call__(self, user_id: str) -> str:
        return hmac.new(self.key, user_id.encode(), hashlib.sha256).hexdigest()[:PSEUDONYM_HEX_DIGITS]
