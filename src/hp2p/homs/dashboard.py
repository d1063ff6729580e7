"""The operator dashboard at ``/ui``: static files with a strict Content-Security-Policy.

The page (``static/index.html``, ``dashboard.js``, the vendored Cytoscape.js) holds no data
and no secret, so it loads without a credential; everything it shows comes from the HOMS API
and the monitoring WebSocket, which the page calls with the credential the operator typed:
the operator token (``Authorization: Bearer`` on fetches, ``token`` in the monitor ``hello``)
or an overlay's id and admin key (``X-HOMS-Admin-Key``, ``overlay_id`` + ``admin_key`` in the
hello). Browsers cannot set headers on a WebSocket, and the monitoring socket already takes
its credential in the first message, so the token never appears in a URL or a log line.

Every response under ``/ui`` carries a CSP that allows scripts, styles and connections only
from this origin (no inline script, no eval, no CDN), so a member-controlled string shown on
the page (a peer-id, an overlay title) cannot run as code even if it slipped past the page's
escaping. ``GET /ui/check`` tells the page whether its credential is right before it asks
for anything else.
"""

from __future__ import annotations

import hmac
from pathlib import Path
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from hp2p.homs.api import may_view

#: Where the page, its script and the vendored graph library live (inside the wheel).
STATIC_DIR = Path(__file__).with_name("static")

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


class DashboardFiles(StaticFiles):
    """Static files with the dashboard's security headers on every answer (errors too)."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        try:
            response = await super().get_response(path, scope)
        except HTTPException as exc:  # 404/405: answered here, so they carry the CSP too
            response = JSONResponse({"error": exc.detail}, status_code=exc.status_code)
        response.headers.update(SECURITY_HEADERS)
        return response


async def check(request: Request) -> Response:
    """200 with the credential's scope, 401 without a valid one (no data either way).

    ``?overlay_id=`` with ``X-HOMS-Admin-Key`` checks an admin key (rate-limited as every
    admin-key attempt is); a bearer token is compared in constant time.
    """
    authorization = request.headers.get("authorization", "")
    scheme, _, token = authorization.partition(" ")
    expected: str | None = getattr(request.app.state, "operator_token", None)
    body: dict[str, Any]
    operator = scheme.lower() == "bearer" and token and expected is not None
    if operator and hmac.compare_digest(token.strip().encode(), str(expected).encode()):
        body = {"scope": "operator"}
        return JSONResponse(body, headers=SECURITY_HEADERS)
    overlay_id = request.query_params.get("overlay_id", "")
    keyed = overlay_id and "\x00" not in overlay_id and request.headers.get("x-homs-admin-key")
    if keyed and await may_view(request, overlay_id):
        body = {"scope": "overlay", "overlay_id": overlay_id}
        return JSONResponse(body, headers=SECURITY_HEADERS)
    body = {
        "error": "give the operator token (printed when the HOMS starts, kept in "
        "hp2p-operator-token) or an overlay-id with its admin key",
        "field": "Authorization",
    }
    return JSONResponse(body, status_code=401, headers=SECURITY_HEADERS)


async def to_index(_request: Request) -> Response:
    return RedirectResponse("/ui/", status_code=307, headers=SECURITY_HEADERS)


def routes() -> list[BaseRoute]:
    """``/ui`` (redirect), ``/ui/check`` and the static files under ``/ui/``."""
    return [
        Route("/ui", to_index, methods=["GET"]),
        Route("/ui/check", check, methods=["GET"]),
        Mount("/ui", app=DashboardFiles(directory=STATIC_DIR, html=True), name="dashboard"),
    ]
