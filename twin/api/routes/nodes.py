"""``/api/v1/nodes``: the plant hierarchy, each node's latest state, history and frames (viewer and up)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query

from twin import queries
from twin.api.deps import ReadSessionDep, SessionDep, ViewerDep, require_role
from twin.auth import Role
from twin.fields import Key, Name, Timestamp, Token
from twin.queries import DEFAULT_LIMIT, MAX_LIMIT, SeriesQuery
from twin.schemas import FramesPage, HistoryPage, NodeForest, NodeState, Order, PropertyPublic, Resolution

router = APIRouter(prefix="/nodes", tags=["nodes"], dependencies=[Depends(require_role(Role.VIEWER))])

Start = Annotated[
    Timestamp | None,
    Query(description="ISO 8601 with timezone; inclusive", examples=["2024-05-01T00:00:00Z"]),
]
End = Annotated[Timestamp | None, Query(description="ISO 8601 with timezone; exclusive")]
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description="most items on one page")]
Cursor = Annotated[Token | None, Query(description="next_cursor of the previous page")]
NodeId = Annotated[Key, Path(description="a node id from the site model")]
PropName = Annotated[Name, Path(min_length=1, max_length=128, description="a property name")]
OrderQ = Annotated[Order, Query(description="asc: oldest first; desc: newest first")]
ResolutionQ = Annotated[
    Resolution,
    Query(description="raw values; 1m or 1h buckets (min, max, mean, count, last); auto: raw up to 6 h, "
                      "1m up to 7 days, 1h beyond"),
]


@router.get("", response_model=NodeForest)
def list_nodes(
    session: SessionDep,
    who: ViewerDep,
    root: Annotated[Key | None, Query(description="only this node's subtree")] = None,
    include_retired: Annotated[bool, Query(description="also nodes that left the site file")] = False,
) -> NodeForest:
    """The node tree (site → area → line → machine → component), or one node's subtree."""
    return queries.node_tree(session, root, include_retired, sites=who.sites)


@router.get("/{node_id}", response_model=NodeState)
def get_node(session: SessionDep, node_id: NodeId) -> NodeState:
    """One node's latest state: its properties' latest values and its latest diagnoses."""
    return queries.node_state(session, node_id)


@router.get("/{node_id}/properties/{prop}", response_model=PropertyPublic)
def get_property(session: SessionDep, node_id: NodeId, prop: PropName) -> PropertyPublic:
    """One property's latest value."""
    return queries.property_public(queries.get_property(session, node_id, prop))


@router.get("/{node_id}/properties/{prop}/history", response_model=HistoryPage)
def get_history(
    session: ReadSessionDep,
    node_id: NodeId,
    prop: PropName,
    start: Start = None,
    end: End = None,
    limit: Limit = DEFAULT_LIMIT,
    cursor: Cursor = None,
    order: OrderQ = "asc",
    resolution: ResolutionQ = "raw",
) -> HistoryPage:
    """A property's history over [start, end), one page at a time: raw values or time buckets."""
    window = SeriesQuery(start=start, end=end, limit=limit, order=order, cursor=cursor, resolution=resolution)
    return queries.property_history(session, node_id, prop, window)


@router.get("/{node_id}/frames", response_model=FramesPage)
def get_frames(
    session: ReadSessionDep,
    node_id: NodeId,
    start: Start = None,
    end: End = None,
    limit: Limit = DEFAULT_LIMIT,
    cursor: Cursor = None,
    order: OrderQ = "asc",
) -> FramesPage:
    """A node's aligned frames over [start, end), one page at a time."""
    window = SeriesQuery(start=start, end=end, limit=limit, order=order, cursor=cursor)
    return queries.node_frames(session, node_id, window)
