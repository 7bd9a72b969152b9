"""Leader election: one process per database holds a role (the alert evaluator); another takes over when it dies.

PostgreSQL: a session-level advisory lock (``pg_try_advisory_lock``) on a connection kept for the purpose. The
server releases a session-level lock when the session ends, so a holder that stops, crashes or is killed frees
it at once (its socket closes), and a holder whose host vanished silently frees it once the server's TCP
keepalives (set on that connection: ~15 s) give up on it. Standbys try again every few seconds.

The holder writes through the lock's own connection (``LeaderLock.transaction``). A connection that lost the lock
has ended, so nothing more can commit through it: a holder that has not noticed yet cannot write next to its
successor. The lock is also the fence.

SQLite serves one process (the embedded setup), which leads; the lock is then one within the process, plus an
OS file lock (``flock``) on ``<database file>.leader-<role>``, so a second process started on the same file by
mistake stands by instead of raising every alert a second time. The OS frees the file lock when its holder dies.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import structlog
from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from twin.db import make_sessionmaker
from twin.errors import LeadershipLost

log = structlog.get_logger(__name__)

# the server gives up on a silent holder after idle + interval × count seconds
# and tcp_user_timeout (ms) bounds how long data it sends may stay unacknowledged (keepalives do not apply then)
_KEEPALIVE = (
    "SET tcp_keepalives_idle = 5",
    "SET tcp_keepalives_interval = 2",
    "SET tcp_keepalives_count = 5",
    "SET tcp_user_timeout = 15000",
)


_LOCAL: dict[tuple[str, int], LeaderLock] = {}  # SQLite: the holder per database and role, in this process
_LOCAL_LOCK = threading.Lock()


def lock_key(name: str) -> int:
    """The advisory lock's 64-bit key for a role name (stable across processes and versions)."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big", signed=True)


class LeaderLock:
    """Who leads for one role on one database.

    Args:
        engine: the database.
        name: the role (one lock per name and database).
    """

    def __init__(self, engine: Engine, name: str) -> None:
        self.engine = engine
        self.name = name
        self.key = lock_key(name)
        self.postgres = engine.dialect.name == "postgresql"
        self._sessions = make_sessionmaker(engine)
        self._conn: Connection | None = None
        self._held = False
        self._local = (engine.url.render_as_string(hide_password=False), self.key)
        database = engine.url.database or ""
        file_db = not self.postgres and database not in ("", ":memory:") and not database.startswith("file:")
        self._lock_path = Path(f"{database}.leader-{name}") if file_db else None
        self._lock_file: IO[bytes] | None = None
        self._said_standby = False  # a standby retries every few seconds: say it once

    @property
    def held(self) -> bool:
        """Whether this process leads (as far as it knows: a write through ``transaction`` is the proof)."""
        if not self.postgres:
            return self._held
        return self._held and self._conn is not None and not self._conn.closed and not self._conn.invalidated

    def acquire(self) -> bool:
        """Try to take the lead without waiting; True when this process leads (now or already)."""
        if self.held:
            return True
        if not self.postgres:
            with _LOCAL_LOCK:
                self._held = _LOCAL.setdefault(self._local, self) is self
            if self._held and not self._lock_other_processes():
                self._drop()
            return self._held
        try:
            conn = self._connection()
            self._held = bool(conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": self.key}).scalar())
            if self._held:  # pg_stat_activity shows who leads
                conn.execute(text(f"SET application_name = 'factory-twin leader {self.name}'"))
            conn.commit()
        except SQLAlchemyError as exc:
            log.warning("leader_lock_unavailable", role=self.name, error=_first_line(exc))
            self._drop()
        return self._held

    def _lock_other_processes(self) -> bool:
        """SQLite: the OS file lock next to the database file; False when another process holds it."""
        if self._lock_path is None or self._lock_file is not None:
            return True
        handle = self._lock_path.open("ab")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            if not self._said_standby:
                log.warning("leader_lock_held_elsewhere", role=self.name, lock=str(self._lock_path),
                            hint="SQLite serves one platform process; run several on PostgreSQL")  # fmt: skip
            self._said_standby = True
            return False
        self._lock_file, self._said_standby = handle, False
        return True

    def _connection(self) -> Connection:
        if self._conn is not None and not self._conn.closed and not self._conn.invalidated:
            return self._conn
        self._drop()
        conn = self.engine.connect()
        conn.detach()  # closing it closes the session (and frees the lock); the pool never sees it again
        try:
            for statement in (*_KEEPALIVE, f"SET application_name = 'factory-twin standby {self.name}'"):
                conn.execute(text(statement))
            conn.commit()
        except SQLAlchemyError:
            conn.close()
            raise
        self._conn = conn
        return conn

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session in one transaction, committed on leaving; on PostgreSQL through the lock's connection."""
        if not self.held:
            raise LeadershipLost(f"not the leader for {self.name}")
        if not self.postgres:
            with self._sessions.begin() as session:
                yield session
            return
        with Session(bind=self._conn, expire_on_commit=False) as session, session.begin():
            yield session

    def release(self) -> None:
        """Give up the lead (graceful stop): unlock and end the lock's session."""
        if self.postgres and self._held and self.held:
            assert self._conn is not None
            try:
                self._conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})
                self._conn.commit()
            except SQLAlchemyError as exc:  # the session ends below either way, which frees the lock
                log.warning("leader_unlock_failed", role=self.name, error=_first_line(exc))
        self._drop()

    def _drop(self) -> None:
        self._held = False
        with _LOCAL_LOCK:
            if _LOCAL.get(self._local) is self:
                del _LOCAL[self._local]
        handle, self._lock_file = self._lock_file, None
        if handle is not None:
            handle.close()  # closing the file frees its flock
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(SQLAlchemyError):
                conn.close()


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
