"""Helpers shared by the peer-shell tests: an in-process HOMS and peers on real loopback TCP."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI

from hp2p.homs.app import create_app
from hp2p.homs.settings import HomsSettings
from hp2p.peer.config import PeerConfig
from hp2p.peer.homs_client import HomsClient
from hp2p.peer.node import Delivery, PeerNode, Subscription
from hp2p.peer.settings import NodeSettings
from hp2p.trust.keys import SigningKey

FAST = PeerConfig(heartbeat_interval=0.5, heartbeat_timeout=2.0, scan_timeout=1.0)


@contextlib.asynccontextmanager
async def homs_app(tmp_path: Path) -> AsyncIterator[FastAPI]:
    """A HOMS app with its store started, reached through httpx's ASGI transport."""
    settings = HomsSettings(
        database=f"sqlite:///{tmp_path / 'homs.db'}", admin_key_cost=2**4, ephemeral_keys=True
    )
    app = create_app(settings, run_expiry_sweep=False)
    async with app.router.lifespan_context(app):
        yield app


@contextlib.asynccontextmanager
async def asgi_client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of ``app`` at ``http://homs`` (no socket: httpx's ASGI transport)."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://homs") as client:
        yield client


def client_for(app: FastAPI) -> HomsClient:
    """An hp2p HOMS client of ``app`` with a fresh membership key, as a peer has."""
    return HomsClient(
        "http://homs",
        transport=httpx.ASGITransport(app=app),
        attempts=1,
        key=SigningKey.generate(),
    )


async def start_node(app: FastAPI, config: PeerConfig = FAST, **settings: Any) -> PeerNode:
    settings.setdefault("join_timeout", 15.0)
    settings.setdefault("leave_timeout", 3.0)
    node = PeerNode(
        NodeSettings(homs="http://homs", **settings), config, homs_client=client_for(app)
    )
    await node.start()
    return node


async def collect(sub: Subscription, count: int, within: float) -> list[Delivery]:
    """Read ``count`` deliveries, failing the test if they do not come within ``within`` seconds."""
    out: list[Delivery] = []
    async with asyncio.timeout(within):
        while len(out) < count:
            out.append(await sub.get())
    return out
