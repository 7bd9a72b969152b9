"""The plant simulator: public data sets replayed as live telemetry, so the demo and the tests have a plant.

It serves exactly the signals the site file binds (``examples/plant.yaml`` by default):

    engine-1   NASA C-MAPSS FD001, one flight cycle per row, over OPC-UA at the endpoint of its source
               (``cell-opcua``); node ids ``ns=2;s=engine-1.<prop>``, namespace ``urn:factory-twin:simulator``
    mill-1     AI4I 2020, one process per row, JSON over MQTT on ``plant/machining/line-1/mill-1/telemetry``
    pump-1     SKAB, one second per row, JSON over MQTT on ``plant/utilities/pump-1/sensors``; its speed setpoint
               a writable OPC-UA variable ``ns=2;s=pump-1.speed`` (2900 rpm until a client writes it)

Each machine sends one row per tick, ``speed`` ticks a second (default 1), and loops at the end of its slice.
Slices: ``examples/data/`` (built by ``examples/data/make_slices.py``; licences in its LICENSES.md).

**MQTT messages** are JSON objects, one per machine and topic per tick, published at QoS 1; each bound
property sits at its binding's dotted ``path``, for the example plant::

    {"type": "L", "air_temp_k": 301.6, "process_temp_k": 310.8, "speed_rpm": 1402.0, "torque_nm": 49.1,
     "tool_wear_min": 112.0, "ts": 1795000000000}
    {"vib": {"acc1_rms": 0.0266, "acc2_rms": 0.0401}, "motor": {"current": 1.33, "voltage": 233.1,
     "temperature": 79.3}, "pressure_bar": 0.055, "fluid_temperature": 26.0, "flow_l_min": 32.0,
     "ts": 1795000000000}

**Timestamps.** ``ts`` (each binding's ``ts_path``) is the source timestamp: an integer, milliseconds since
the Unix epoch (UTC), taken from the source's clock at publish time. OPC-UA values carry the same clock as
their SourceTimestamp and the simulator's wall clock as their ServerTimestamp. A source's clock is the wall
clock unless ``clock_skew_s`` shifts it or ``bad_clock`` resets it to 2000-01-01T00:00:00Z (then it runs
on from there), to exercise the agent's clock checks.

**Units** are the data sets' own, as the bindings declare them: SKAB's pressure is sent in bar (the plant's
property is kPa; the binding's ``unit: bar`` has the agent convert).

**Setpoints** (``setpoints.py``): a value a client may write, such as the pump's speed, scales the signals it
drives after a short lag (the pump's flow with the speed, its pressure, vibration and current with its square).

**Faults** (``faults.py``): a signal can be pushed above or below its range, or go stale, from a given
second of the run on.

Use it from Python::

    from factory_twin.simulator import Simulator, SimulatorConfig, examples
    config = SimulatorConfig(site=load_site(examples.example_site_path()), data_dir=examples.data_dir())
    async with Simulator(config) as sim:
        await sim.run(30)          # or sim.tick() by hand; sim.endpoints says where OPC-UA is served

or from the shell: ``factory-twin simulate --help``.
"""

from factory_twin.simulator import examples
from factory_twin.simulator.errors import EndpointError, ScenarioError, SimulatorError, SliceError
from factory_twin.simulator.faults import Fault, FaultKind, parse_fault
from factory_twin.simulator.mqtt_publisher import MqttPublisher
from factory_twin.simulator.opcua_server import NAMESPACE_URI, OpcUaSimServer
from factory_twin.simulator.run import (
    DEFAULT_MQTT_URL,
    Simulator,
    SimulatorConfig,
    SimulatorStats,
    run_simulator,
)

__all__ = [
    "DEFAULT_MQTT_URL",
    "NAMESPACE_URI",
    "EndpointError",
    "Fault",
    "FaultKind",
    "MqttPublisher",
    "OpcUaSimServer",
    "ScenarioError",
    "Simulator",
    "SimulatorConfig",
    "SimulatorError",
    "SimulatorStats",
    "SliceError",
    "examples",
    "parse_fault",
    "run_simulator",
]
