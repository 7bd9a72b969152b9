"""The platform's REST API (FastAPI): ``create_app`` builds it; routes in ``routes/``, deps in ``deps``."""

from twin.api.app import create_app

__all__ = ["create_app"]
