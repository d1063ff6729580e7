"""Operating hp2p (docs/operate.md): the admin key of ``--create``, duplicate titles,
``hp2p overlay list|show|remove|modify`` and ``/metrics`` on the HOMS and on a peer.

Real processes on 127.0.0.1: a ``hp2p homs``, ``hp2p peer`` processes followed through their
JSON events, the ``hp2p overlay`` command as a user runs it. Waits have deadlines, no sleeps.
"""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hp2p import prometheus
from hp2p.homs.launch import HomsProcess
from hp2p.homs.ops import HomsMetrics
from hp2p.peer.admin_keys import (
    AdminKeyFileError,
    admin_key_path,
    load_admin_key,
    store_admin_key,
)
from hp2p.peer.metrics import exposition
from peer_procs import MeshProc, PeerProc, Procs, create_core_overlay


def hp2p(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``python -m hp2p ARGS`` as a user runs it: (status, stdout, stderr)."""
    return subprocess.run(
        [sys.executable, "-m", "hp2p", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def overlay_list(url: str) -> list[dict[str, object]]:
    done = hp2p("overlay", "list", "--homs", url, "--json")
    assert done.returncode == 0, done.stderr
    listed: list[dict[str, object]] = json.loads(done.stdout)
    return listed


def test_create_stores_the_admin_key_refuses_duplicates_and_overlay_cli_cleans_up(
    tmp_path: Path, homs: HomsProcess
) -> None:
    url = homs.url
    procs = Procs()
    try:
        root = PeerProc(tmp_path, url, "root", "--create", "chat")
        procs.append(root)
        root.wait_joined()
        chat = root.overlay_id
        # the key is printed once on stderr and stored 0600 where `hp2p overlay` finds it
        path = admin_key_path(url, chat)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        key = load_admin_key(url, chat)
        assert key
        assert f"admin key {key} stored in {path}" in root.err_path.read_text()

        again = hp2p("peer", "--homs", url, "--create", "chat")
        assert again.returncode == 1
        assert "--join 'chat'" in again.stderr
        assert "--new" in again.stderr
        assert chat in again.stderr  # the table of the existing overlay

        # a left-over (no members) with the same title: --join picks the one with members
        spare = create_core_overlay(url, "chat")
        joiner = PeerProc(tmp_path, url, "joiner", "--join", "chat")
        procs.append(joiner)
        assert joiner.wait_joined().get("overlay_id") == chat

        # two empty overlays with one title: refused with a table naming both
        empties = {create_core_overlay(url, "empty") for _ in range(2)}
        refused = hp2p("peer", "--homs", url, "--join", "empty")
        assert refused.returncode == 1
        assert all(oid in refused.stderr for oid in empties), refused.stderr
        assert "PEERS" in refused.stderr

        listed = {str(o["overlay-id"]): o for o in overlay_list(url)}
        assert listed[chat]["num_peers"] == 2
        assert listed[spare]["num_peers"] == 0
        assert listed[chat]["type"] == "core"
        assert isinstance(listed[chat]["created"], float)
        table = hp2p("overlay", "list", "--homs", url)
        assert table.returncode == 0
        assert chat in table.stdout
        assert "core/tree" in table.stdout

        shown = hp2p("overlay", "show", chat, "--homs", url, "--json")
        assert shown.returncode == 0, shown.stderr
        members = {p["peer-id"] for p in json.loads(shown.stdout)["peers"]}
        assert members == {"root", "joiner"}
        ambiguous = hp2p("overlay", "show", "empty", "--homs", url)
        assert ambiguous.returncode == 1
        assert "overlay-id" in ambiguous.stderr

        # modify with the key the test overlays were made with; a wrong key is refused (1)
        wrong = hp2p("overlay", "modify", spare, "--homs", url, "--title", "x", "--admin-key", "no")
        assert wrong.returncode == 1
        assert len(wrong.stderr.strip().splitlines()) == 1
        renamed = hp2p(
            "overlay", "modify", spare, "--homs", url, "--title", "spare", "--admin-key", "admin"
        )
        assert renamed.returncode == 0, renamed.stderr
        no_key = hp2p("overlay", "remove", spare, "--homs", url)  # none stored, none given
        assert no_key.returncode == 2
        assert "--admin-key" in no_key.stderr

        # remove the created overlay with the stored key: its members go, the file too
        removed = hp2p("overlay", "remove", chat, "--homs", url)
        assert removed.returncode == 0, removed.stderr
        assert not path.exists()
        titles = {str(o["overlay-id"]): o["title"] for o in overlay_list(url)}
        assert chat not in titles
        assert titles[spare] == "spare"
        usage = hp2p("overlay", "list", "--homs", url.removeprefix("http://"))
        assert usage.returncode == 2
        assert len(usage.stderr.strip().splitlines()) == 1
    finally:
        for proc in procs:
            proc.terminate()


def _scrape(url: str, token: str | None) -> dict[str, dict[str, object]]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    answer = httpx.get(f"{url}/metrics", headers=headers, timeout=10)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    return prometheus.parse(answer.text)


def _value(families: dict[str, dict[str, object]], name: str, series: str | None = None) -> float:
    samples = families[name]["samples"]
    assert isinstance(samples, dict)
    return float(samples[series or name])


def test_metrics_of_the_homs_and_of_a_peer_move_with_joins_and_messages(
    tmp_path: Path, homs: HomsProcess
) -> None:
    url = homs.url
    assert httpx.get(f"{url}/metrics", timeout=10).status_code == 403  # operator token needed
    before = _scrape(url, homs.operator_token)
    assert before["hp2p_homs_joins_total"]["type"] == "counter"
    assert _value(before, "hp2p_homs_joins_total") == 0
    procs = Procs()
    try:
        root, _child = procs.start_tree(tmp_path, url, ["root", "child"], "metered")
        api = PeerProc(tmp_path, url, "reader", "--join", root.overlay_id, "--api", "127.0.0.1:0")
        procs.append(api)
        joined = api.wait_joined()
        for n in range(5):
            root.command(f"publish hello-{n}")
        headers = {"Authorization": f"Bearer {joined['api_token']}"}
        assert httpx.get(f"{joined['api']}/metrics", timeout=10).status_code == 401
        deadline = time.monotonic() + 30
        while True:  # bounded: deliveries reach the reader within the deadline
            text = httpx.get(f"{joined['api']}/metrics", headers=headers, timeout=10).text
            peer = prometheus.parse(text)
            if _value(peer, "hp2p_peer_deliveries_total") >= 5 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert _value(peer, "hp2p_peer_deliveries_total") >= 5
        for name, kind in (
            ("hp2p_peer_duplicates_dropped_total", "counter"),
            ("hp2p_peer_relayed_bytes_total", "counter"),
            ("hp2p_peer_repairs_total", "counter"),
            ("hp2p_peer_gaps_total", "counter"),
            ("hp2p_peer_parent_rtt_seconds", "gauge"),
            ("hp2p_peer_depth", "gauge"),
            ("hp2p_peer_cache_messages", "gauge"),
        ):
            assert peer[name]["type"] == kind, name
            assert peer[name]["help"], name
        assert _value(peer, "hp2p_peer_depth") >= 1
        assert _value(peer, "hp2p_peer_cache_messages") >= 5

        after = _scrape(url, homs.operator_token)
        assert _value(after, "hp2p_homs_joins_total") >= 3
        assert _value(after, "hp2p_homs_peers") == 3
        overlay = f'hp2p_homs_overlay_peers{{overlay_id="{root.overlay_id}"}}'
        assert _value(after, "hp2p_homs_overlay_peers", overlay) == 3
        assert after["hp2p_homs_request_duration_seconds"]["type"] == "histogram"
        joins = 'hp2p_homs_request_duration_seconds_count{route="/peer"}'
        assert _value(after, "hp2p_homs_request_duration_seconds", joins) >= 3
        assert "hp2p_homs_suspects" in after
        assert "hp2p_homs_reports_total" in after
    finally:
        for proc in procs:
            proc.terminate()


def test_request_labels_stay_bounded() -> None:
    """Paths and methods a client makes up are counted as ``other``, not as new series."""
    metrics = HomsMetrics()
    for n in range(1000):
        metrics.record(f"M{n}", f"/made-up/{n}", 404, 0.001)
    metrics.record("POST", "/peer", 202, 0.002)
    assert len(metrics.requests) == 2
    assert metrics.joins == 1
    text = prometheus.render([metrics.latency.family("h_seconds", "h")])
    assert text.count("_count{") == 2


@given(st.text(max_size=40), st.floats(allow_nan=False, allow_infinity=False))
def test_label_values_are_escaped(label: str, value: float) -> None:
    family = prometheus.gauge("x_g", 'help with "quotes"\nand a newline')
    family.add(value, {"k": label})
    text = prometheus.render([family])
    assert len(text.rstrip("\n").split("\n")) == 3  # no label can break a line
    (series,) = prometheus.parse(text)["x_g"]["samples"].values()  # type: ignore[attr-defined]
    assert series == pytest.approx(value)


def test_a_peer_status_without_a_core_still_renders() -> None:
    text = exposition({"peer_id": "p", "state": "starting", "node": {}, "links": {}})
    families = prometheus.parse(text)
    assert _value(families, "hp2p_peer_deliveries_total") == 0
    assert "NaN" in text  # depth and parent RTT unknown


def test_a_submesh_source_stores_its_admin_key_and_serves_metrics(
    tmp_path: Path, homs: HomsProcess
) -> None:
    """``--create --parent`` (a SubMesh) keeps its key as a CoreTree creator does."""
    core = create_core_overlay(homs.url, "core")
    procs = Procs()
    try:
        source = MeshProc(
            tmp_path,
            homs.url,
            "src",
            "--create",
            "blocks",
            "--parent",
            core,
            "--api",
            "127.0.0.1:0",
        )
        procs.append(source)
        joined = source.wait_joined()
        key = load_admin_key(homs.url, source.overlay_id)
        assert key
        assert f"admin key {key} stored" in source.err_path.read_text()
        headers = {"Authorization": f"Bearer {joined['api_token']}"}
        text = httpx.get(f"{joined['api']}/metrics", headers=headers, timeout=10).text
        families = prometheus.parse(text)
        info = f'hp2p_peer_info{{peer_id="src",overlay_id="{source.overlay_id}",kind="mesh",'
        assert any(series.startswith(info) for series in families["hp2p_peer_info"]["samples"])  # type: ignore[attr-defined]
        assert families["hp2p_peer_relayed_bytes_total"]["type"] == "counter"
    finally:
        for proc in procs:
            proc.terminate()


def test_stored_admin_keys_are_private_and_found_by_the_homs_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HP2P_ADMIN_KEY_DIR", str(tmp_path / "keys"))
    path = store_admin_key("http://127.0.0.1:8081", "ov-1", "k1", "chat")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert load_admin_key("http://127.0.0.1:8081/", "ov-1") == "k1"  # same HOMS
    assert load_admin_key("http://127.0.0.1:8082", "ov-1") is None  # another HOMS
    odd = admin_key_path("http://h", "../../etc/passwd")  # an id is never a path
    assert odd.parent.parent == tmp_path / "keys"
    path.chmod(0o644)
    with pytest.raises(AdminKeyFileError, match="chmod 600"):
        load_admin_key("http://127.0.0.1:8081", "ov-1")
