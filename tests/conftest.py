"""Shared test set-up: hypothesis profiles, a scratch key directory, a HOMS process."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

import netns
from hp2p.homs.db import scratch_database
from hp2p.homs.launch import HomsProcess, start_homs

PG_URL = os.environ.get("HP2P_TEST_POSTGRES_URL")

settings.register_profile("dev", deadline=None)
settings.register_profile(
    "ci", deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=False
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


@pytest.fixture(autouse=True, scope="session")
def _submesh_keys_stay_in_a_temporary_directory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[None]:
    """A SubMesh source writes its signing key to ``$HP2P_KEY_DIR`` (default: the user's state
    directory); the tests and the processes they start keep theirs in a temporary one. The
    source processes a test starts inherit it, so a standby on the same machine finds the key
    of the source it replaces, as it would on the user's host."""
    dirs = {
        "HP2P_KEY_DIR": tmp_path_factory.mktemp("submesh-keys"),
        # the admin keys `hp2p peer --create` stores (hp2p.peer.admin_keys)
        "HP2P_ADMIN_KEY_DIR": tmp_path_factory.mktemp("admin-keys"),
    }
    before = {name: os.environ.get(name) for name in dirs}
    os.environ.update({name: str(path) for name, path in dirs.items()})
    yield
    for name, value in before.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture
def homs(tmp_path: Path) -> Iterator[HomsProcess]:
    """A real ``hp2p homs`` process on a fresh SQLite file in the test's folder."""
    with start_homs(tmp_path) as proc:
        yield proc


@pytest.fixture(params=["sqlite", "postgresql"])
async def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A fresh database on each backend: a SQLite file, and a scratch PostgreSQL database
    when ``HP2P_TEST_POSTGRES_URL`` names a server (skipped, saying so, otherwise)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'homs.db'}"
        return
    if not PG_URL:
        pytest.skip("set HP2P_TEST_POSTGRES_URL=postgresql://postgres@127.0.0.1:5432/postgres")
    async with scratch_database(PG_URL, "hp2p_test") as url:
        yield url


@pytest.fixture
def nat_net() -> Iterator[netns.Topology]:
    """Namespaces behind a cone and a symmetric NAT (``tests/netns.py``), three homes behind
    each; skipped, saying why, where namespaces cannot be made. Everything is removed after."""
    why = netns.why_unavailable()
    if why:
        pytest.skip(why)
    with netns.topology(homes_per_nat=3) as topo:
        yield topo
    assert netns.namespaces_of(topo.token) == [], "namespaces left over"


#: Long end-to-end scenarios (minutes of real processes, NAT namespaces, ffmpeg, a browser):
#: `make test` leaves them out so that it stays under 15 minutes; `make test-heavy` runs them,
#: and `.ci/run` runs both. Every service keeps its unit and fast integration tests in
#: `make test`.
HEAVY_FILES = frozenset(
    {
        "test_nat_tcp.py",
        "test_nat_stun.py",
        "test_nat_webrtc.py",
        "test_chain_node.py",
        "test_chain_attacks.py",
        "test_chain_example.py",
        "test_bench_chain.py",
        "test_iot_example.py",
        "test_iot_replicas.py",
        "test_iot_history.py",
        "test_bench_iot.py",
        "test_media_live.py",
        "test_media_record.py",
        "test_media_resilience.py",
        "test_media_page.py",
        "test_media_example.py",
        "test_bench_media.py",
        "test_readme.py",
        "test_subtree_source_loss.py",
        "test_bridge_standby_submesh.py",
        "test_dashboard.py",
    }
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.name in HEAVY_FILES:
            item.add_marker(pytest.mark.heavy)
