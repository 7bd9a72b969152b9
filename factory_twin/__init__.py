"""The shell: the ``factory-twin`` command and the demo, wiring edge_agent, twin and models together."""
