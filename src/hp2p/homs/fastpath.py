"""``POST /peer`` (HybridOverlayJoin) served as plain ASGI, ahead of FastAPI's routing.

The join is the request the HOMS must answer 2,000 times a second. FastAPI's path adds
routing, the dependency/endpoint machinery, a ``Request`` object and exception-middleware
layers: a few hundred µs of CPU per request, as much as the join transaction itself. This
middleware answers ``POST /peer`` directly from the ASGI scope, with the very same code as the
documented route (:func:`hp2p.homs.api.join_answer` for the answer,
:func:`hp2p.homs.api.error_answer` for refusals, the same body limits), so the two cannot
drift apart; every other request goes on to FastAPI unchanged, and ``/docs`` still documents
``POST /peer`` from that route.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Receive, Scope, Send

from hp2p.homs.api import error_answer, is_json_type, join_answer
from hp2p.homs.errors import HompError

_JSON_HEADERS = [(b"content-type", b"application/json")]


class JoinFastPath:
    """Pure ASGI middleware: ``POST /peer`` here, everything else to the wrapped app."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/peer" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        state = scope["app"].state
        try:
            body = await _read_body(scope, receive, state.settings.max_body_bytes)
            status, content = await join_answer(state.store, _recovery_param(scope), body)
            headers: list[tuple[str, str]] = []
        except Exception as exc:  # every refusal, and the unexpected, as a JSON answer
            status, content, headers = error_answer(exc)
        raw_headers = [
            *_JSON_HEADERS,
            (b"content-length", str(len(content)).encode()),
            *((k.lower().encode("latin-1"), v.encode("latin-1", "replace")) for k, v in headers),
        ]
        await send({"type": "http.response.start", "status": status, "headers": raw_headers})
        await send({"type": "http.response.body", "body": content})


def _recovery_param(scope: Scope) -> str | None:
    query: bytes = scope.get("query_string", b"")
    if not query:
        return None
    value = None
    for key, val in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
        if key == "recovery":
            value = val  # the last one wins, as in Starlette's query_params
    return value


async def _read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The body, refused early if it is too large or not declared as JSON (as the route)."""
    declared: bytes | None = None
    content_type: bytes | None = None
    for name, value in scope["headers"]:
        if name == b"content-length":
            declared = value
        elif name == b"content-type":
            content_type = value
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HompError(413, f"request body larger than {limit} bytes", "body")
    if content_type is not None:
        text = content_type.decode("latin-1")
        if not is_json_type(text):
            raise HompError(415, f"send the body as application/json, not {text!r}", "content-type")
    chunks: list[bytes] = []
    size = 0
    while True:
        message: Any = await receive()
        if message["type"] == "http.disconnect":
            raise HompError(400, "the client went away before sending the whole body", "body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise HompError(413, f"request body larger than {limit} bytes", "body")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)
