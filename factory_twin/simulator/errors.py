"""Errors of the plant simulator; asyncua and MQTT client errors are translated where those libraries are called.

SimulatorError
├── SliceError       a data slice is missing or malformed (message names the file and line)
├── ScenarioError    the site, a fault or a clock option asks for something the simulator cannot do
└── EndpointError    an OPC-UA endpoint cannot be served or the MQTT broker cannot be reached
"""


class SimulatorError(Exception):
    """Base of every error raised by the simulator."""


class SliceError(SimulatorError):
    """A data slice is missing or malformed."""


class ScenarioError(SimulatorError):
    """The site, a fault or a clock option asks for something the simulator cannot do."""


class EndpointError(SimulatorError):
    """An OPC-UA endpoint cannot be served or the MQTT broker cannot be reached."""
