"""The review database file: one SQLite connection (WAL, synchronous=FULL) shared by the verdict
store (`webapp.reviews`) and the report store (`webapp.report_store`), migrated on open.

Thread-safe (one connection behind a lock); several processes may share the file: writers take
`BEGIN IMMEDIATE` and wait up to `BUSY_TIMEOUT_MS`. A write returns only after COMMIT, so an
acknowledged save survives a killed process (and, with FULL, a power cut).
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from webapp.schema import MIGRATIONS, SCHEMA_VERSION

BUSY_TIMEOUT_MS = 30_000


class ReviewStoreError(RuntimeError):
    """The database file cannot be used as a review store (not SQLite, foreign, too new, no WAL)."""


class Database:
    """An open, migrated review database."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        try:
            self.conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise ReviewStoreError(f"cannot open review database {self.path}: {exc}") from exc
        try:
            self._open()
        except sqlite3.DatabaseError as exc:
            self.conn.close()
            raise ReviewStoreError(f"{self.path} is not a usable review database: {exc}") from exc
        except BaseException:
            self.conn.close()
            raise

    def _open(self) -> None:
        """Configure and migrate. Two processes opening a new file at once can meet SQLite's "database is
        locked" where its busy handler does not wait (switching the journal mode of a fresh file): retry
        that, for up to `BUSY_TIMEOUT_MS`, like any other wait for the lock."""
        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
        pause = 0.01
        while True:
            try:
                self._configure()
                self._migrate()
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() + pause > deadline:
                    raise
            time.sleep(pause)
            pause = min(pause * 2, 0.5)

    def _configure(self) -> None:
        conn = self.conn
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        self._check_version(conn)  # before switching the journal mode of someone else's file
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise ReviewStoreError(f"{self.path}: SQLite refused WAL mode (got {mode!r}); use a local disk")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")

    def _check_version(self, conn: sqlite3.Connection) -> int:
        """The file's schema version; refuses files from a newer app and SQLite files that are not review stores."""
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise ReviewStoreError(
                f"{self.path} has review schema version {version}, newer than this app's {SCHEMA_VERSION}; "
                "upgrade the app"
            )
        if version == 0 and conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
            raise ReviewStoreError(f"{self.path} is an SQLite database of something else, not a review store")
        return version

    def _migrate(self) -> None:
        """Apply the missing steps of `MIGRATIONS` in one write transaction (safe against a concurrent opener)."""
        with self.transaction() as conn:
            version = self._check_version(conn)
            for step in range(version, SCHEMA_VERSION):
                MIGRATIONS[step](conn)
                conn.execute(f"PRAGMA user_version = {step + 1}")

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (BEGIN IMMEDIATE ... COMMIT) under the thread lock; rolled back on error."""
        with self._lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
                self.conn.execute("COMMIT")
            except BaseException:
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                raise

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        with self._lock:
            return self.conn.execute(sql, params).fetchall()

    def close(self) -> None:
        with self._lock:
            self.conn.close()
