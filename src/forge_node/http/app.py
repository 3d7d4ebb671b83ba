"""create_app(): the falcon WSGI app each gunicorn worker builds after it is forked."""

from __future__ import annotations

import falcon

from .. import __version__


class HealthResource:
    """Liveness: the process answers. No database call, so a slow database never fails it."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"status": "healthy", "version": __version__}


def create_app() -> falcon.App:
    app = falcon.App()
    app.add_route("/_api/health", HealthResource())
    return app
