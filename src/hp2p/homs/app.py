"""The HOMS application factory: settings in, a FastAPI app with its store and sweeper out.

Tests, benchmarks and ``hp2p homs`` all build the app here, so they run the same thing. The
lifespan upgrades the schema (idempotent), runs the expiry sweep and, on PostgreSQL, the
LISTEN/NOTIFY fan-out that makes several HOMS processes behave as one. The store, the monitor
hub and the signalling switchboard hang off ``app.state``.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI

from hp2p import __version__
from hp2p.homs import dashboard, ws
from hp2p.homs.api import install_error_handlers, router, schema_components
from hp2p.homs.credentials import KeyRing
from hp2p.homs.db import parse_database_url
from hp2p.homs.fanout import PostgresFanout
from hp2p.homs.fastpath import JoinFastPath
from hp2p.homs.limits import HomsLimits
from hp2p.homs.liveness import run_sweeper
from hp2p.homs.ops import HomsMetrics, RequestMetrics
from hp2p.homs.ops import router as ops_router
from hp2p.homs.settings import HomsSettings
from hp2p.homs.signalling import Switchboard
from hp2p.homs.store import HomsStore


def build_store(settings: HomsSettings, clock: Callable[[], float] | None = None) -> HomsStore:
    kwargs: dict[str, Any] = {}
    if clock is not None:
        kwargs["clock"] = clock
    keyring = KeyRing(
        None if settings.ephemeral_keys else settings.keys_path(),
        ttl=settings.credential_ttl,
        clock=clock or time.time,
    )
    return HomsStore(
        parse_database_url(settings.database),
        rng=random.Random(settings.seed),
        tree_list_size=settings.tree_peer_list_size,
        mesh_list_size=settings.mesh_peer_list_size,
        default_expires=settings.default_peer_expires,
        delete_empty_overlays=settings.delete_empty_overlays,
        admin_key_cost=settings.admin_key_cost,
        keyring=keyring,
        default_security=settings.default_security,
        **kwargs,
    )


def create_app(
    settings: HomsSettings,
    *,
    store: HomsStore | None = None,
    clock: Callable[[], float] | None = None,
    run_expiry_sweep: bool = True,
) -> FastAPI:
    """A ready-to-serve HOMS app.

    ``store`` lets a caller share one store (and its clock) with the app; ``run_expiry_sweep``
    off lets tests drive expiry themselves with :func:`hp2p.homs.liveness.sweep_once`.
    """
    settings.check()
    the_store = store if store is not None else build_store(settings, clock)
    limits = HomsLimits(
        admin_rate=settings.admin_key_rate,
        admin_burst=settings.admin_key_burst,
        create_rate=settings.create_rate,
        create_burst=settings.create_burst,
        max_entries=settings.limit_table_size,
    )
    operator_token = settings.operator_token or secrets.token_urlsafe(32)
    board = Switchboard(
        the_store,
        the_store.hub,
        "etri-2023" if settings.signalling_profile == "etri-2023" else "secure",
        operator_token=operator_token,
        limits=limits,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await the_store.start()
        fanout = None
        if not the_store.target.is_sqlite:
            dsn = the_store.target.url.set(drivername="postgresql")
            fanout = PostgresFanout(dsn.render_as_string(hide_password=False), the_store.hub)
            fanout.target = board
            await fanout.start()
            board.fanout = fanout
        app.state.fanout = fanout
        stop = asyncio.Event()
        sweeper = None
        if run_expiry_sweep:
            sweeper = asyncio.create_task(
                run_sweeper(the_store, settings.expiry_sweep, stop), name="hp2p-homs-expiry"
            )
        try:
            yield
        finally:
            stop.set()
            if sweeper is not None:
                await sweeper
            if fanout is not None:
                board.fanout = None
                await fanout.close()
            await the_store.close()

    app = FastAPI(
        title="hp2p HOMS",
        version=__version__,
        summary="Hybrid overlay management server (ITU-T Q.4100 §7.3, HOMP of Q.4103)",
        description=(
            "HOMP in the HOMS-2023 dialect of the ITU-T reference implementation. "
            'Errors are JSON: `{"error": …, "field": "$.path"}`; a closed overlay that '
            'refuses a peer answers 407 `{"overlay":{"overlay-id"}}`. See docs/homs.md.'
        ),
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.store = the_store
    app.state.hub = the_store.hub
    app.state.switchboard = board
    app.state.limits = limits
    app.state.operator_token = operator_token
    app.include_router(router)
    app.include_router(ops_router)
    app.router.routes.extend(ws.routes())
    app.router.routes.extend(dashboard.routes())  # the operator's page at /ui
    # POST /peer (the join) answered as plain ASGI ahead of FastAPI's routing: same code.
    app.add_middleware(JoinFastPath)
    # outermost: times every request, the join fast path's included (docs/operate.md)
    app.state.metrics = HomsMetrics()
    app.add_middleware(RequestMetrics, metrics=app.state.metrics)
    install_error_handlers(app)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            schema = get_openapi(
                title=app.title,
                version=app.version,
                summary=app.summary,
                description=app.description,
                routes=app.routes,
            )
            schema.setdefault("components", {}).setdefault("schemas", {}).update(
                schema_components()
            )
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
