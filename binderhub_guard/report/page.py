"""The guard's admin page, GET /hub/guard: live charts and tables over /hub/api/guard.

The page is JupyterHub's own ``page.html`` (header, login, theme) around a small vanilla-JS
client served from package data, which polls the JSON report from the browser. The hub
renders the page once per visit; each refresh costs the hub one ``GET /hub/api/guard``.

The template lives in ``data/templates`` (``binderhub_guard.hub`` puts that directory on
``JupyterHub.template_paths``); JS and CSS are served from ``data/static`` under
``/hub/guard/static/``, versioned by content hash so browsers cache them until they change.
"""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path

from jupyterhub.handlers import BaseHandler
from jupyterhub.utils import url_path_join
from tornado import web

from ..scopes import ADMIN_SCOPE, READ_SCOPE
from . import signals

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
TEMPLATES_DIR = DATA_DIR / "templates"
STATIC_DIR = DATA_DIR / "static"


DEFAULT_REFRESH_SECONDS = 5
MIN_REFRESH_SECONDS = 1
MAX_REFRESH_SECONDS = 300


@cache
def asset_version(name: str) -> str:
    """A short content hash of a static file, for cache-busting its URL."""
    return hashlib.sha256((STATIC_DIR / name).read_bytes()).hexdigest()[:12]


class GuardPageHandler(BaseHandler):
    """The page itself; ``?refresh=N`` sets the polling period in seconds (default 5)."""

    @web.authenticated
    async def get(self) -> None:
        # has_scope rather than @needs_scope: needs_scope refuses scopes unknown at import,
        # and the guard's custom scopes are defined only when the hub loads its roles.
        if not self.has_scope(READ_SCOPE):
            self.log.warning(
                "Not authorizing access to %s: requires %s", self.request.path, READ_SCOPE
            )
            raise web.HTTPError(403)
        html = await self.render_template(
            "guard.html",
            guard_api_url=url_path_join(self.hub.base_url, "api/guard"),
            guard_js_url=self._asset_url("guard.js"),
            guard_css_url=self._asset_url("guard.css"),
            guard_can_admin=self.has_scope(ADMIN_SCOPE),
            guard_refresh_seconds=self._refresh_seconds(),
            # what each leak signal means, from the rules' registry
            guard_signal_kinds=signals.signal_kinds(),
        )
        self.finish(html)

    def _asset_url(self, name: str) -> str:
        return url_path_join(self.hub.base_url, "guard/static", name) + f"?v={asset_version(name)}"

    def _refresh_seconds(self) -> int:
        raw = self.get_argument("refresh", None)
        if raw is None:
            return DEFAULT_REFRESH_SECONDS
        try:
            seconds = int(raw)
        except ValueError:
            seconds = 0
        if not MIN_REFRESH_SECONDS <= seconds <= MAX_REFRESH_SECONDS:
            raise web.HTTPError(
                400,
                f"Query parameter 'refresh' must be an integer from {MIN_REFRESH_SECONDS} to"
                f" {MAX_REFRESH_SECONDS} (seconds), got {raw!r}",
            )
        return seconds


#: (path relative to the hub prefix, handler[, kwargs]), registered with the report's routes.
page_handlers: list[tuple] = [
    (r"/guard", GuardPageHandler),
    (r"/guard/static/(.*)", web.StaticFileHandler, {"path": str(STATIC_DIR)}),
]
