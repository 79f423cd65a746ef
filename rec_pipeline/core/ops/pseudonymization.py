"""Pseudonymized user ids at landing.

With `REC_PIPELINE_PSEUDONYMIZE_KEY` (the key itself) or `REC_PIPELINE_PSEUDONYMIZE_KEY_FILE` (a
file holding it) set, landing replaces every user id with HMAC-SHA256(key, user id), as 32 hex
digits (128 bits), before anything is written. Everything downstream (features, models, the
published lists, the serving database) only ever sees the pseudonym. The raw text of rejected rows
is not kept (it holds the raw id), and ids derived from an event's content are computed from the
pseudonym. The key is read from the environment where it is used; it is never written to the
warehouse, the serving database, Dagster's run config or the logs. Keep one key for a warehouse's
whole life: another key (or none) makes the same person a different user.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path


KEY_ENV, KEY_FILE_ENV = "REC_PIPELINE_PSEUDONYMIZE_KEY", "REC_PIPELINE_PSEUDONYMIZE_KEY_FILE"
MIN_KEY_BYTES = 32
PSEUDONYM_HEX_DIGITS = 32


class PseudonymizationKeyError(ValueError):
    """The pseudonymization key is missing, too short, or given twice."""


@dataclass(frozen=True)
class Pseudonymizer:
    key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.key) < MIN_KEY_BYTES:
            raise PseudonymizationKeyError(f"the pseudonymization key must be at least {MIN_KEY_BYTES} bytes")

    def __call__(self, user_id: str) -> str:
        return hmac.new(self.key, user_id.encode(), hashlib.sha256).hexdigest()[:PSEUDONYM_HEX_DIGITS]

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Pseudonymizer | None:
        """The configured pseudonymizer, or None when pseudonymization is off."""
        key, key_file = env.get(KEY_ENV), env.get(KEY_FILE_ENV)
        if key and key_file:
            raise PseudonymizationKeyError(f"set {KEY_ENV} or {KEY_FILE_ENV}, not both")
        if key_file:
            path = Path(key_file)
            if not path.is_file():
                raise PseudonymizationKeyError(f"{KEY_FILE_ENV} names {path}, which is not a file")
            return cls(path.read_bytes().strip())
        return cls(key.encode()) if key else None
