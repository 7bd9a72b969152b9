"""Errors of the shared contract.

    PlantError
    ├── SiteError      a site file is unreadable or invalid (message names file, line, field)
    └── WireError      a wire message cannot be decoded
"""


class PlantError(Exception):
    """Base of every error raised by plant/."""


class SiteError(PlantError):
    """A site file is unreadable or invalid."""


class WireError(PlantError):
    """A wire message cannot be decoded."""
