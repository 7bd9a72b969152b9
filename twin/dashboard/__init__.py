"""The maintenance dashboard: pages and static files served by the platform, and the API behind them.

``router`` serves the single-page app at ``/`` (every script, style sheet and font comes from ``static/``:
it works with no internet); ``api.router`` and ``api.session_router`` go under ``/api/v1``.
"""

from twin.dashboard.pages import router

__all__ = ["router"]
