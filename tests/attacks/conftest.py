"""Shared set-up of the attack tests (issue #11): a HOMS app per database backend.

Every attack that reaches the database runs on SQLite and, when ``HP2P_TEST_POSTGRES_URL`` is
set, on PostgreSQL too, because the two backends fail differently (PostgreSQL refuses NUL in
text, SQLite stores it).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from hp2p.homs.app import create_app
from hp2p.homs.settings import HomsSettings

PG_URL = os.environ.get("HP2P_TEST_POSTGRES_URL")

AppFactory = Callable[..., contextlib.AbstractAsyncContextManager[FastAPI]]


@contextlib.asynccontextmanager
async def attack_app(database: str, **settings: Any) -> AsyncIterator[FastAPI]:
    """A started HOMS app on ``database``; ``settings`` override :class:`HomsSettings`."""
    settings.setdefault("admin_key_cost", 2**4)
    app = create_app(HomsSettings(database=database, **settings), run_expiry_sweep=False)
    async with app.router.lifespan_context(app):
        yield app


@contextlib.asynccontextmanager
async def client_of(app: FastAPI, address: str = "127.0.0.1") -> AsyncIterator[httpx.AsyncClient]:
    """An in-process HTTP client of ``app`` that the app sees as coming from ``address``."""
    transport = httpx.ASGITransport(app=app, client=(address, 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://homs") as client:
        yield client


@pytest.fixture
async def client(db_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """A client of a default HOMS on each backend."""
    async with attack_app(db_url) as app, client_of(app) as c:
        yield c
