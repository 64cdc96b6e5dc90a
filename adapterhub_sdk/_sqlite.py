"""Small SQLite helpers shared by the registry and the fingerprint cache (no SQLAlchemy)."""

from __future__ import annotations

import sqlite3
import time
from typing import Any


def enable_wal(cur: Any, timeout_s: float) -> None:
    """Switch a SQLite database to WAL (persistent, so usually already done). Switching
    needs an exclusive lock, and SQLite answers "database is locked" at once, without its
    busy handler, while another process creates or switches the same new file: retry for
    up to ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    delay = 0.005
    while True:
        try:
            if str(cur.execute("PRAGMA journal_mode").fetchone()[0]).lower() == "wal":
                return
            cur.execute("PRAGMA journal_mode=WAL").fetchone()
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            if time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.2)
