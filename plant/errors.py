"""Errors of the shared contract.

    PlantError
    ├── SiteError          a site file is unreadable or invalid (message names file, line, field)
    ├── WireError          a wire message cannot be decoded
    ├── BrokerUrlError     an ``mqtt://`` URL is malformed (also a ValueError, for settings validators)
    └── MqttError          the MQTT broker is unreachable, dropped us or refused an operation
        └── MqttAuthError  the broker refused our credentials or certificates
"""


class PlantError(Exception):
    """Base of every error raised by plant/."""


class SiteError(PlantError):
    """A site file is unreadable or invalid."""


class WireError(PlantError):
    """A wire message cannot be decoded."""


class BrokerUrlError(PlantError, ValueError):
    """An MQTT broker URL is malformed; the message says why."""


class MqttError(PlantError):
    """The MQTT broker is unreachable, closed the connection or refused an operation."""


class MqttAuthError(MqttError):
    """The MQTT broker refused our credentials or certificates."""
