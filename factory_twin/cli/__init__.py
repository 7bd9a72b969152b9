"""The ``factory-twin`` command: one entry point, a subcommand group per program (like git or docker).

Subcommands are imported only when called, so ``factory-twin keys create`` does not pay for asyncua,
onnxruntime or scikit-learn.
"""

from __future__ import annotations

import importlib

import click

_COMMANDS = {
    "demo": ("factory_twin.cli.demo", "demo", "Simulator, agent and platform together (embedded defaults)."),
    "serve": ("factory_twin.cli.serve", "serve", "Run the platform: ingest workers and the REST API."),
    "agent": ("factory_twin.cli.agent", "agent", "Run or inspect an edge agent."),
    "simulate": ("factory_twin.cli.simulate", "simulate", "Replay the demo plant over OPC-UA and MQTT."),
    "db": ("factory_twin.cli.db", "db", "Database migrations."),
    "ingest": ("factory_twin.cli.ingest", "ingest", "List and replay the uplink messages ingest could not store."),
    "models": ("factory_twin.cli.models", "models", "Train, evaluate, upload and promote diagnostic models."),
    "keys": ("factory_twin.cli.keys", "keys", "Create, list, rotate and revoke API keys."),
    "users": ("factory_twin.cli.users", "users", "Dashboard users: create, disable, change role, reset password."),
    "gateways": ("factory_twin.cli.gateways", "gateways",
                 "Edge gateways' broker credentials, and Mosquitto's password and ACL files."),
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(_COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in _COMMANDS:
            return None
        module, attr, _ = _COMMANDS[cmd_name]
        command = getattr(importlib.import_module(module), attr)
        assert isinstance(command, click.Command)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, help_) for name, (_, _, help_) in _COMMANDS.items()])


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="factory-twin")
def cli() -> None:
    """factory-twin: a digital-twin maintenance service for factories."""


def main() -> None:
    """Console entry point."""
    cli()
