"""Setpoint writes: ``POST /api/v1/nodes/{id}/properties/{prop}/desired`` asks the owning gateway to write a value.

The answer (202) is the command: its id, state and expiry. ``GET .../desired`` shows desired against reported
until they agree or the command ends; ``POST /api/v1/commands/{id}/confirm`` is the second person of a
two-person property. Every refusal is a problem response whose detail starts with the reason code
(``out_of_limits: ...``) and is recorded in the audit trail.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request

from plant.wire import from_us
from twin import commands
from twin.api.deps import SessionDep, TechnicianDep, ViewerDep
from twin.fields import Key
from twin.schemas.setpoints import CommandPublic, DesiredRequest, DesiredState
from twin.tables import SetpointCommand

router = APIRouter(tags=["setpoints"])

NodeId = Annotated[Key, Path(description="a node id from the site model")]
PropName = Annotated[Key, Path(description="a writable property")]
CommandId = Annotated[str, Path(min_length=8, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]


def public(cmd: SetpointCommand) -> CommandPublic:
    """The command as the API shows it."""
    return CommandPublic(
        id=cmd.id, node=cmd.node_id, prop=cmd.prop, gateway=cmd.gateway, value=cmd.value, previous=cmd.previous,
        state=cmd.state, actor=cmd.actor, reason=cmd.reason, confirmed_by=cmd.confirmed_by,
        created_at=from_us(cmd.created_at).isoformat(), expires_at=from_us(cmd.expires_at).isoformat(),
        outcome=cmd.outcome, detail=cmd.detail, reported=cmd.reported,
    )


def _wake(request: Request) -> None:
    dispatcher = getattr(request.app.state, "commands", None)
    if dispatcher is not None:
        dispatcher.wake()


@router.post("/nodes/{node_id}/properties/{prop}/desired", response_model=CommandPublic, status_code=202)
def set_desired(request: Request, session: SessionDep, who: TechnicianDep, node_id: NodeId, prop: PropName,
                body: DesiredRequest) -> CommandPublic:
    """Ask the owning gateway to write ``value``; checked for role, type, limits and rate, then sent."""
    cmd = commands.request(session, who, node_id, prop,
                           commands.SetpointRequest(body.value, body.reason, body.expires_s))
    _wake(request)
    return public(cmd)


@router.get("/nodes/{node_id}/properties/{prop}/desired", response_model=DesiredState)
def get_desired(session: SessionDep, _who: ViewerDep, node_id: NodeId, prop: PropName) -> DesiredState:
    """The last desired value, its command, and the latest measured value."""
    state = commands.desired_vs_reported(session, node_id, prop)
    cmd = state.command
    return DesiredState(node=node_id, prop=prop, desired=cmd.value if cmd is not None else None,
                        reported=state.reported, in_sync=state.in_sync,
                        command=public(cmd) if cmd is not None else None)


@router.post("/commands/{command_id}/confirm", response_model=CommandPublic)
def confirm(request: Request, session: SessionDep, who: TechnicianDep, command_id: CommandId) -> CommandPublic:
    """The second person of a two-person write confirms it; it is sent next."""
    cmd = commands.confirm(session, who, command_id)
    _wake(request)
    return public(cmd)


@router.get("/commands/{command_id}", response_model=CommandPublic)
def get_command(session: SessionDep, _who: ViewerDep, command_id: CommandId) -> CommandPublic:
    """One command and what became of it."""
    return public(commands.get_command(session, command_id))
