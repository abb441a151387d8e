"""What a restarted daemon finds: the last outcome per target (a JSON file), and the private copies of a batch."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from mlops_core.files import atomic_write

from .logs import kv

__all__ = ["load_state", "save_state", "SNAPSHOT_PREFIX"]

log = logging.getLogger("watcher")

#: the private copy of a settled batch a run reads is ``<state dir>/batch-<sha256[:16]>.csv``
SNAPSHOT_PREFIX = "batch-"


def load_state(path: Path, target: Path) -> dict:
    """The last outcome recorded for ``target`` (empty when none or unreadable)."""
    try:
        state = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        log.warning("state=unreadable path=%s reason=%s", kv(path), kv(err))
        return {}
    return state if isinstance(state, dict) and state.get("target") == str(target) else {}


def save_state(path: Path, state: dict) -> None:
    """Write the state file atomically (a reader sees the old state or the new one)."""
    atomic_write(path, json.dumps(state, indent=2, default=str))
