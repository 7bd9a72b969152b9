"""`factory-twin agent browse URL`: list an OPC-UA server's variables to help write the site model."""

from __future__ import annotations

import asyncio
import json
import os

import click

from edge_agent.browse import browse_variables
from edge_agent.errors import AgentError
from plant.site import OpcUaSecurity, SecurityMode


@click.command("browse")
@click.argument("url")
@click.option(
    "--timeout", "timeout_s", type=float, default=10.0, show_default=True, help="Seconds per request."
)
@click.option(
    "--max-nodes", type=int, default=10_000, show_default=True, help="Stop after visiting this many nodes."
)
@click.option(
    "--include-server", is_flag=True, help="Also list the Server object's own diagnostics variables."
)
@click.option(
    "--security-mode", type=click.Choice([m.value for m in SecurityMode]), default="None", show_default=True
)
@click.option(
    "--certificate", type=click.Path(exists=True, dir_okay=False), help="Client certificate (PEM/DER)."
)
@click.option("--private-key", type=click.Path(exists=True, dir_okay=False), help="Client private key.")
@click.option("--username", help="User name; the password is read from --password-env.")
@click.option(
    "--password-env",
    default="OPCUA_PASSWORD",
    show_default=True,
    help="Environment variable of the password.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line instead of a table.")
def browse(
    url: str,
    timeout_s: float,
    max_nodes: int,
    include_server: bool,
    security_mode: str,
    certificate: str | None,
    private_key: str | None,
    username: str | None,
    password_env: str,
    as_json: bool,
) -> None:
    """List the variables of the OPC-UA server at URL: node id, browse path, data type, unit."""
    try:
        security = OpcUaSecurity(
            mode=SecurityMode(security_mode),
            certificate=certificate,
            private_key=private_key,
            username=username,
        )
    except ValueError as exc:
        raise click.BadParameter(str(exc).splitlines()[-1], param_hint="--security-mode") from None
    password = os.environ.get(password_env) if username else None
    try:
        found = asyncio.run(
            browse_variables(
                url,
                timeout_s=timeout_s,
                max_nodes=max_nodes,
                include_server=include_server,
                security=security,
                password=password,
            )
        )
    except AgentError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        for v in found:
            click.echo(json.dumps({"node_id": v.node_id, "path": v.path, "type": v.dtype, "unit": v.unit}))
        return
    rows = [("NODE ID", "BROWSE PATH", "TYPE", "UNIT")] + [
        (v.node_id, v.path, v.dtype, v.unit) for v in found
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        click.echo(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}".rstrip())
    click.echo(f"{len(found)} variables", err=True)
