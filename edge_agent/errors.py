"""Errors of the edge agent; asyncua and paho errors are translated where those libraries are called.

    AgentError
    ├── ConfigError         agent settings or site model unusable (the old config keeps running on reload)
    ├── ConnectorError      a source cannot be reached or refused us (retried with backoff)
    │   └── SecurityError   certificates or credentials rejected (retried, but said loudly)
    ├── InputRejected       one input refused (malformed, wrong type, NaN, absurd time): counted, dead-lettered
    ├── ModelUnusable       a diagnostic model cannot be used here (load failed, inputs the asset lacks, bad probe)
    └── OutboxError         the local outbox cannot be opened or written
"""


class AgentError(Exception):
    """Base of every error raised by edge_agent/."""


class ConfigError(AgentError):
    """Agent settings or site model are unusable."""


class ConnectorError(AgentError):
    """A source cannot be reached or refused the connection."""


class SecurityError(ConnectorError):
    """Certificates or credentials were rejected."""


class InputRejected(AgentError):
    """One input was refused; ``reason`` is a short stable code for metrics."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class ModelUnusable(AgentError):
    """A diagnostic model cannot be used on this gateway; the model in use is kept."""


class OutboxError(AgentError):
    """The local outbox cannot be opened or written."""
