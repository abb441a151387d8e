"""Request ids: time-ordered, so the prediction log's primary-key index stays append-mostly."""

from __future__ import annotations

import os
import time

__all__ = ["new_request_id", "new_request_ids"]


def new_request_id() -> str:
    """A UUIDv7 (RFC 9562) as 32 hex digits: the Unix time in ms, then 74 random bits.

    Time-ordered ids keep the prediction store's primary-key index append-mostly; random (v4)
    ids would put every insert on a random page of a large index (figures: bench/ab_log.py).
    """
    rand = int.from_bytes(os.urandom(10), "big")
    value = ((time.time_ns() // 1_000_000) << 80 | 0x7 << 76 | (rand >> 62 & 0xFFF) << 64
             | 0b10 << 62 | rand & 0x3FFF_FFFF_FFFF_FFFF)
    return f"{value:032x}"


def new_request_ids(rows: int | None) -> tuple[str, tuple[str, ...]]:
    """The call's id and one id per row: the call's own for a single row (``rows`` None), else the call's
    first 96 bits (time and 42 random bits) and the row's index: unique and cheap."""
    call_id = new_request_id()
    return call_id, (call_id,) if rows is None else tuple(f"{call_id[:24]}{i:08x}" for i in range(rows))
