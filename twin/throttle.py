"""Failed credential checks, counted per client address and per user name, with lock-outs that double.

Every password check (``POST /api/v1/session``) and every API key check goes through :meth:`Throttle.attempt`:

- An address may fail ``address_failures`` times (default 20) within a window of ``window_s`` (a minute);
  a user name ``name_failures`` times (default 5). The next failure locks the address or name out for
  ``lockout_s`` (a minute); each further lock-out of the same address or name doubles it, up to
  ``lockout_max_s`` (15 minutes). An address or name quiet for ``lockout_max_s`` after its last attempt and
  the end of its last lock-out starts afresh.
- While locked, a check is refused at once with :class:`~twin.errors.TooManyAttempts` (HTTP 429 with
  ``Retry-After``), before any password hash is computed or the database is asked.
- An attempt counts as a failure *when it starts* and is forgiven when it succeeds (or fails for a reason that
  is not a guess: a revoked or expired key), so a burst of parallel guesses cannot slip past the limit.
- A successful login clears its name's record; an address's record is only forgiven the one attempt, so a
  guesser holding one valid account cannot reset the address count by logging in between guesses.
- Key prefixes are public (listings show them) and a key's secret has 256 random bits: a prefix is never
  locked, which would let anyone who saw a listing lock a gateway out. Unknown keys count against the address.

The counters live in the process (one per API app): behind several replicas each counts on its own, so put a
rate limit on the reverse proxy as well. Each table keeps at most ``max_entries`` records, the least recently
seen dropped first, so a client inventing names or addresses cannot grow memory without bound.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum

import structlog

from twin.config import TwinSettings
from twin.errors import BadCredentials, TooManyAttempts

log = structlog.get_logger(__name__)


class Scope(StrEnum):
    """What a failure is counted against."""

    ADDRESS = "address"
    NAME = "name"


class Kind(StrEnum):
    """Which credential was checked."""

    PASSWORD = "password"  # noqa: S105 (the kind's name)
    KEY = "key"


_WHOSE = {Scope.ADDRESS: "from this address", Scope.NAME: "for this user name"}


@dataclass(frozen=True, slots=True)
class Policy:
    """Failures allowed per window before a lock-out, and how long lock-outs last."""

    name_failures: int = 5
    address_failures: int = 20
    window_s: float = 60.0
    lockout_s: float = 60.0
    lockout_max_s: float = 900.0
    max_entries: int = 50_000

    def limit(self, scope: Scope) -> int:
        """Failures allowed within a window for ``scope``."""
        return self.name_failures if scope is Scope.NAME else self.address_failures


@dataclass(slots=True)
class _Record:
    """One address's or name's failures in the current window and its lock-out state."""

    window_start: float
    failures: int = 0
    strikes: int = 0  # lock-outs so far: the next one lasts lockout_s * 2**strikes
    locked_until: float = 0.0
    seen: float = 0.0


@dataclass(slots=True)
class ThrottleStats:
    """Counters since the process started, for metrics."""

    failures: dict[Kind, int] = field(default_factory=lambda: dict.fromkeys(Kind, 0))
    refused: dict[Scope, int] = field(default_factory=lambda: dict.fromkeys(Scope, 0))
    lockouts: dict[Scope, int] = field(default_factory=lambda: dict.fromkeys(Scope, 0))
    locked: dict[Scope, int] = field(default_factory=lambda: dict.fromkeys(Scope, 0))


def policy_of(settings: TwinSettings) -> Policy:
    """The lock-out policy the settings ask for (TWIN_AUTH_*)."""
    return Policy(
        name_failures=settings.auth_name_failures,
        address_failures=settings.auth_address_failures,
        lockout_s=settings.auth_lockout_s,
        lockout_max_s=max(settings.auth_lockout_max_s, settings.auth_lockout_s),
    )


class Throttle:
    """Thread-safe failure counters with lock-outs (sync routes run in a thread pool).

    Args:
        policy: limits and lock-out durations.
        clock: monotonic seconds (tests pass their own).
    """

    def __init__(self, policy: Policy | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy or Policy()
        self._clock = clock
        self._lock = threading.Lock()
        self._tables: dict[Scope, OrderedDict[str, _Record]] = {s: OrderedDict() for s in Scope}
        self._stats = ThrottleStats()

    @contextmanager
    def attempt(
        self, kind: Kind, address: str, name: str | None = None, *, guesses: tuple[type[Exception], ...] = ()
    ) -> Iterator[None]:
        """Guard one credential check by ``address`` (and for user ``name``).

        Raises TooManyAttempts at once if either is locked out or has no attempts left. Inside, a
        BadCredentials (or one of ``guesses``) counts as a failure and is re-raised; success forgives.
        """
        keys = [(Scope.ADDRESS, address)] + ([(Scope.NAME, name.casefold())] if name is not None else [])
        counted: tuple[type[Exception], ...] = (BadCredentials, *guesses)
        self._begin(keys)
        try:
            yield
        except counted:
            self._fail(kind, keys, address)
            raise
        except BaseException:
            self._forgive(keys, success=False)
            raise
        self._forgive(keys, success=True)

    def stats(self) -> ThrottleStats:
        """A copy of the counters, with the number of records locked now."""
        now = self._clock()
        with self._lock:
            s = ThrottleStats(dict(self._stats.failures), dict(self._stats.refused), dict(self._stats.lockouts))
            for scope, table in self._tables.items():
                s.locked[scope] = sum(1 for r in table.values() if r.locked_until > now)
        return s

    # ---- the bookkeeping, under the lock -----------------------------------------------------------------

    def _begin(self, keys: list[tuple[Scope, str]]) -> None:
        now = self._clock()
        with self._lock:
            records = [(scope, self._record(scope, key, now)) for scope, key in keys]
            for scope, record in records:
                wait = self._wait(scope, record, now)
                if wait > 0:
                    self._stats.refused[scope] += 1
                    raise TooManyAttempts(
                        f"too many failed sign-ins {_WHOSE[scope]}: try again in {math.ceil(wait)} s",
                        retry_after=wait,
                    )
            for _scope, record in records:
                record.failures += 1  # counted now, forgiven on success

    def _wait(self, scope: Scope, record: _Record, now: float) -> float:
        """Seconds until ``record`` may try again; 0 if it may now."""
        if record.locked_until > now:
            return record.locked_until - now
        if now - record.window_start >= self.policy.window_s:
            record.window_start, record.failures = now, 0
        if record.failures >= self.policy.limit(scope):  # its last attempts are still being checked
            return max(1.0, record.window_start + self.policy.window_s - now)
        return 0.0

    def _fail(self, kind: Kind, keys: list[tuple[Scope, str]], address: str) -> None:
        now = self._clock()
        with self._lock:
            self._stats.failures[kind] += 1
            for scope, key in keys:
                record = self._record(scope, key, now)
                if record.failures < self.policy.limit(scope):
                    continue
                lock_s = min(self.policy.lockout_s * 2**record.strikes, self.policy.lockout_max_s)
                record.locked_until, record.strikes = now + lock_s, record.strikes + 1
                record.window_start, record.failures = record.locked_until, 0
                self._stats.lockouts[scope] += 1
                log.warning("credential_checks_locked_out", scope=scope.value, key=key if scope is Scope.NAME
                            else address, kind=kind.value, seconds=lock_s, strikes=record.strikes)

    def _forgive(self, keys: list[tuple[Scope, str]], *, success: bool) -> None:
        now = self._clock()
        with self._lock:
            for scope, key in keys:
                table = self._tables[scope]
                if success and scope is Scope.NAME:
                    table.pop(key, None)
                    continue
                record = table.get(key)
                if record is not None and record.failures > 0:
                    record.failures -= 1
                    record.seen = now

    def _record(self, scope: Scope, key: str, now: float) -> _Record:
        table = self._tables[scope]
        record = table.get(key)
        if record is not None and now - max(record.seen, record.locked_until) > self.policy.lockout_max_s:
            record = None  # quiet long enough since its last attempt and lock-out: its strikes are forgotten
        if record is None:
            record = _Record(window_start=now)
            table[key] = record
            while len(table) > self.policy.max_entries:
                table.popitem(last=False)
        table.move_to_end(key)
        record.seen = now
        return record
