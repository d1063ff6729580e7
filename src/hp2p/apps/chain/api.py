"""The HTTP/WebSocket API of a chain node (producer or full node), served with uvicorn.

=============================  ===================================================================
``POST /tx``                   a signed transaction: msgpack body, or JSON (``Content-Type:
                               application/json``) with hex bytes; → ``{"hash"}``. 400 for
                               malformed bytes, 422 with ``reason`` for a refused transaction,
                               409 on a full node (it has no CoreTree link: submit to a
                               producer), 503 when the producer is not attached to the tree
``GET  /tx/{hash}``            ``pending`` / ``in_block`` / ``final`` / ``unknown``, with height
``GET  /account/{address}``    balance and next nonce at the head
``GET  /block/{height|hash}``  a block with its transactions (404 when there is none)
``GET  /head``                 the head block's header
``GET  /status``               heights, mempool, refusals by reason, the overlay peer's status
``WS   /heads``                one JSON text frame per new head
=============================  ===================================================================

The API needs no token: a transaction carries its own signature, and everything else it gives
is the chain's public data. It still stands behind the peer API's guard
(:mod:`hp2p.peer.api_guard`): a Host header naming this API (DNS rebinding), no foreign Origin
(cross-site pages), a bounded body. It binds 127.0.0.1 unless told otherwise.

No ``from __future__ import annotations`` here: FastAPI reads the route annotations at runtime.
"""

import logging
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, HTTPException, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse

from hp2p.apps.chain.model import MAX_TX_BYTES, ChainFormatError, Transaction
from hp2p.apps.chain.service import ChainService, NotBroadcastError
from hp2p.apps.chain.state import TxRejectedError
from hp2p.apps.chain.views import tx_from_body
from hp2p.peer.api_guard import ApiGuard
from hp2p.peer.settings import ANY_HOSTS, is_loopback_host, split_host_port
from hp2p.transport.http_server import EmbeddedHttpServer

log = logging.getLogger("hp2p.apps.chain.api")

__all__ = ["ApiError", "ChainApi", "NotAProducerError", "build_app"]


class ApiError(Exception):
    """The API could not start; ``str(err)`` says why and what to do."""


class NotAProducerError(Exception):
    """This node cannot put a transaction on the CoreTree (a full node)."""


#: What the node does with an accepted transaction (a producer broadcasts it).
Submit = Callable[[Transaction], None]


def build_app(
    service: ChainService, submit: Submit, node_status: Callable[[], dict[str, Any]]
) -> FastAPI:
    app = FastAPI(title="hp2p chain node API", summary="Transactions, accounts, blocks, heads")
    _transaction_routes(app, service, submit)
    _chain_routes(app, service, node_status)
    return app


def _transaction_routes(app: FastAPI, service: ChainService, submit: Submit) -> None:
    @app.post("/tx")
    async def post_tx(request: Request) -> JSONResponse:
        """Submit a signed transaction (msgpack body, or JSON with hex bytes)."""
        body = await request.body()
        try:
            tx = tx_from_body(body, request.headers.get("content-type", ""))
        except ChainFormatError as exc:
            service.malformed["tx"] += 1
            raise HTTPException(400, {"reason": "malformed", "detail": str(exc)}) from None
        try:
            submit(tx)
        except NotAProducerError as exc:
            raise HTTPException(409, {"reason": "not_producer", "detail": str(exc)}) from None
        except TxRejectedError as exc:
            raise HTTPException(422, {"reason": exc.reason, "detail": str(exc)}) from None
        except NotBroadcastError as exc:
            raise HTTPException(503, {"reason": "not_broadcast", "detail": str(exc)}) from None
        return JSONResponse({"hash": tx.hash, "status": "pending"}, status_code=202)

    @app.get("/tx/{tx_hash}")
    async def get_tx(tx_hash: str) -> dict[str, Any]:
        """Where a transaction is: pending, in_block, final (with its height) or unknown."""
        return await service.tx_status(tx_hash.lower()[:64])


def _chain_routes(
    app: FastAPI, service: ChainService, node_status: Callable[[], dict[str, Any]]
) -> None:
    @app.get("/account/{address}")
    async def get_account(address: str) -> dict[str, Any]:
        try:
            return service.account(address.lower())
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from None

    @app.get("/block/{ref}")
    async def get_block(ref: str) -> dict[str, Any]:
        try:
            found = await service.block(ref.lower())
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from None
        if found is None:
            raise HTTPException(404, f"no block {ref[:64]} on this node")
        return found

    @app.get("/head")
    async def get_head() -> dict[str, Any]:
        return service.head()

    @app.get("/status")
    async def get_status() -> dict[str, Any]:
        return {**service.status(), "peer": node_status()}

    @app.websocket("/heads")
    async def heads(ws: WebSocket) -> None:
        """Each new head as one JSON text frame (a slow reader loses the oldest)."""
        listener = service.listen()
        if listener is None:
            await ws.close(code=1013, reason="too many listeners")
            return
        await ws.accept()
        try:
            await ws.send_json(service.head())
            while True:
                await ws.send_json(await listener.queue.get())
        except (WebSocketDisconnect, RuntimeError):
            pass
        finally:
            listener.close()


class ChainApi:
    """Serves :func:`build_app` with uvicorn in the node's event loop, behind the guard."""

    def __init__(self, app: FastAPI, listen: str, *, public: bool = False) -> None:
        try:
            self.host, self.port = split_host_port(listen, "api")
        except ValueError as exc:
            raise ApiError(str(exc)) from None
        if not public and not is_loopback_host(self.host):
            raise ApiError(
                f"refusing to serve the chain API on {listen}: not a loopback address; use "
                "127.0.0.1:PORT, or give --api-public if you mean it"
            )
        allowed = None if self.host in ANY_HOSTS else frozenset({self.host})
        self.guard = ApiGuard(app, token=None, max_body=4 * MAX_TX_BYTES, allowed_hosts=allowed)
        self.url = ""
        self._http = EmbeddedHttpServer(
            self.host, self.port, what="chain API", error=ApiError, task_name="chain-api"
        )

    async def start(self) -> str:
        """Listen and return the base URL; :class:`ApiError` if the port cannot be used."""
        self.url = await self._http.start(self.guard)
        self.port = self._http.port
        return self.url

    async def stop(self) -> None:
        await self._http.stop()
