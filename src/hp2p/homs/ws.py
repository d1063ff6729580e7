"""The HOMS WebSocket endpoint: signalling and monitoring on ``/ws`` (and the bare path).

The reference peer and web UI connect to ``ws://host:8082`` with no path, so the endpoint is
mounted both at ``/ws`` and at ``/``; ``hp2p homs --ws-port 8082`` adds a second listening
socket to the same server for them. Everything this module does is moving text between the
socket and :class:`~hp2p.homs.signalling.Switchboard`: one reader loop that feeds the
switchboard in arrival order (so a peer's offer is relayed before its candidates) and one
writer task that drains the session's bounded outbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from hp2p.homs.signalling import Session, Switchboard

log = logging.getLogger("hp2p.homs.ws")

#: Messages waiting to be written to one socket before it counts as too slow.
OUTBOX_BOUND = 256


async def signalling_endpoint(websocket: WebSocket) -> None:
    """Serve one signalling/monitoring socket until either side closes it."""
    board: Switchboard = websocket.app.state.switchboard
    settings = websocket.app.state.settings
    await websocket.accept()
    address = websocket.client.host if websocket.client is not None else "unknown"
    session = Session(
        outbox_bound=OUTBOX_BOUND, rate=settings.ws_rate, burst=settings.ws_burst, address=address
    )

    async def close(code: int, reason: str) -> None:
        with contextlib.suppress(Exception):
            await websocket.close(code, reason)

    board.on_open(session)
    writer = asyncio.create_task(
        session.pump(websocket.send_text, close), name="hp2p-homs-ws-writer"
    )
    try:
        while session.closing is None:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                break
            data = message.get("text")
            if data is None:
                data = message.get("bytes") or b""
            await board.on_message(session, data)
    except WebSocketDisconnect:
        pass
    except Exception:  # a transport fault ends this socket only, never the HOMS
        log.exception("signalling socket failed; closing it")
        session.close(1011, "internal error in the HOMS (logged there)")
    finally:
        board.on_close(session)
        if session.closing is None:
            writer.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(writer, timeout=5.0)


def routes() -> list[WebSocketRoute]:
    """``/ws`` for hp2p clients, ``/`` for reference peers and the reference web UI."""
    return [
        WebSocketRoute("/ws", signalling_endpoint, name="signalling"),
        WebSocketRoute("/", signalling_endpoint, name="signalling-bare"),
    ]
