"""The ``factory-twin`` command: one entry point, a subcommand group per program (like git or docker)."""

from __future__ import annotations

import click

from factory_twin.cli.agent import agent
from factory_twin.cli.db import db
from factory_twin.cli.demo import demo
from factory_twin.cli.keys import keys
from factory_twin.cli.models import models
from factory_twin.cli.serve import serve
from factory_twin.cli.simulate import simulate


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="factory-twin")
def cli() -> None:
    """factory-twin: a digital-twin maintenance service for factories."""


for _command in (demo, serve, agent, simulate, db, models, keys):
    cli.add_command(_command)


def main() -> None:
    """Console entry point."""
    cli()
