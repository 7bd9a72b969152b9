"""Errors of the platform; the API maps them to HTTP in one handler (twin/api/app.py).

    TwinError
    ├── ConfigError          settings are invalid or unsafe (placeholder secret, bad URL)
    ├── SchemaOutdated       the database schema is behind the code: run `factory-twin db upgrade`
    ├── StoreError           the database refused or failed a write (translated from SQLAlchemy)
    │   ├── StoreRefused     the database refused the data itself: writing it again would fail again
    │   └── LeadershipLost   this process no longer holds a leader lock (twin/leader.py)
    ├── BrokerError          the MQTT broker is unreachable or refused us (from plant.mqtt's errors)
    ├── NotFound             a node, property, alert... does not exist
    ├── Conflict             the request contradicts the current state
    ├── InvalidRequest       a request asks for something impossible: bad range, foreign cursor (422)
    ├── Unavailable          what the request needs is not there now: no teacher model for the cascade (503)
    └── AuthError
        ├── Unauthenticated  no key, or an unknown or revoked one (401)
        │   └── BadCredentials  a key or password that matches nothing: a guess, counted (twin/throttle.py)
        ├── Forbidden        the key's role is too low (403)
        │   └── OutOfScope   the request names a site the key or person is not given (twin/scopes.py)
        └── TooManyAttempts  too many failed credential checks: try again after ``retry_after`` s (429)
"""


class TwinError(Exception):
    """Base of every error raised by twin/."""


class ConfigError(TwinError):
    """Settings are invalid or unsafe."""


class SchemaOutdated(TwinError):
    """The database schema is behind the code."""


class StoreError(TwinError):
    """The database refused or failed an operation."""


class StoreRefused(StoreError):
    """The database refused the data itself (a value it cannot hold, a constraint): retrying cannot help."""


class LeadershipLost(StoreError):
    """The connection that held a leader lock is gone: another process may lead now."""


class BrokerError(TwinError):
    """The MQTT broker cannot be reached or refused the connection."""


class NotFound(TwinError):
    """A requested object does not exist."""


class Conflict(TwinError):
    """The request contradicts the current state."""


class AuthError(TwinError):
    """Authentication or authorisation failed."""


class Unauthenticated(AuthError):
    """No valid API key."""


class BadCredentials(Unauthenticated):
    """A key or password that matches nothing (unknown, malformed or wrong), as opposed to a revoked or expired
    key: the failures a guesser makes, which twin/throttle.py counts."""


class Forbidden(AuthError):
    """The key's role is too low for this action."""


class OutOfScope(Forbidden):
    """The request names a node, alert, work order or command of a site the caller is not given."""


class TooManyAttempts(AuthError):
    """Too many failed credential checks from this address or for this name; retry after ``retry_after`` s."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class InvalidRequest(TwinError):
    """The request's parameters are inconsistent or unusable (an inverted time range, a foreign cursor)."""


class Unavailable(TwinError):
    """What the request needs is missing or failing right now (no teacher model for the cascade); retry later."""
