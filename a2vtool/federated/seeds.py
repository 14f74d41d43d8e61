"""Derived seeds: every random draw of a run comes from (run seed, purpose, index...), so a resumed run draws the same."""

from __future__ import annotations

import hashlib
import json


def derive_seed(seed: int, *parts: int) -> int:
    """A seed for (round, node, ...) that depends only on the run seed, so a resumed run draws the same numbers."""
    h = hashlib.sha256(json.dumps([seed, *parts]).encode()).digest()
    return int.from_bytes(h[:7], "little")
