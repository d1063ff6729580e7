"""The operator dashboard at ``/ui``: its files and headers, its credential check, and the live
graph in a real headless Chromium against a real HOMS and real ``hp2p peer`` processes.

The browser tests need Debian's ``chromium`` (``make ui-deps`` installs it) and skip, saying
so, without it. ``HP2P_DASHBOARD_SHOT=docs/dashboard.png`` also runs the screenshot test, which
draws a 30-peer tree and saves the picture docs/operate-dashboard.md shows.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cdp_browser import Browser, find_chromium
from homp_bodies import create
from hp2p.homs.app import create_app
from hp2p.homs.dashboard import CONTENT_SECURITY_POLICY
from hp2p.homs.launch import HomsProcess
from hp2p.homs.settings import HomsSettings
from peer_procs import CORE_ADMIN_KEY, PeerProc, Procs

CHROMIUM = find_chromium()
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no chromium on PATH: `make ui-deps` installs Debian's chromium (or set HP2P_CHROMIUM)",
)
#: Fast liveness, so a killed peer is removed (and its children re-attach) within seconds.
PEER_ARGS = ("--expires", "5", "--set", "heartbeat_interval=0.5", "--set", "heartbeat_timeout=2")


@pytest.fixture
async def client(tmp_path: Path) -> Any:
    settings = HomsSettings(
        database=f"sqlite:///{tmp_path / 'homs.db'}",
        admin_key_cost=2**4,
        ephemeral_keys=True,
        operator_token="op-secret",
    )
    app = create_app(settings, run_expiry_sweep=False)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://homs") as c:
            yield c


async def test_the_page_loads_without_a_credential_under_a_strict_csp(client: Any) -> None:
    assert (await client.get("/ui")).headers["location"] == "/ui/"
    for path, kind in [
        ("/ui/", "text/html"),
        ("/ui/dashboard.js", "javascript"),
        ("/ui/dashboard.css", "text/css"),
        ("/ui/vendor/cytoscape.min.js", "javascript"),
    ]:
        answer = await client.get(path)
        assert answer.status_code == 200, path
        assert kind in answer.headers["content-type"]
        assert answer.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert answer.headers["x-content-type-options"] == "nosniff"
    assert "script-src 'self';" in CONTENT_SECURITY_POLICY
    page = (await client.get("/ui/")).text
    assert "<script>" not in page  # no inline script at all
    assert "onclick" not in page
    missing = await client.get("/ui/nothing.js")
    assert missing.status_code == 404
    assert "content-security-policy" in missing.headers
    assert (await client.get("/ui/../pyproject.toml")).status_code == 404


async def test_the_credential_check_takes_the_operator_token_or_an_admin_key(client: Any) -> None:
    assert (await client.get("/ui/check")).status_code == 401
    wrong = await client.get("/ui/check", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert "operator token" in wrong.json()["error"]
    ok = await client.get("/ui/check", headers={"Authorization": "Bearer op-secret"})
    assert ok.json() == {"scope": "operator"}
    created = await client.post("/homs", json=create(title="ui", description=""))
    overlay_id = created.json()["overlay"]["overlay-id"]
    key = {"X-HOMS-Admin-Key": "admin"}
    mine = await client.get(f"/ui/check?overlay_id={overlay_id}", headers=key)
    assert mine.json() == {"scope": "overlay", "overlay_id": overlay_id}
    bad = await client.get(f"/ui/check?overlay_id={overlay_id}", headers={"X-HOMS-Admin-Key": "x"})
    assert bad.status_code == 403


# ---------------------------------------------------------------------------- in a browser

GRAPH = "window.hp2pGraph"
NODE_COUNT = f"{GRAPH} ? {GRAPH}.nodes().length : -1"
#: peer-id -> sorted primary neighbours, as drawn
PRIMARIES = f"""(() => {{
  const out = {{}};
  {GRAPH}.nodes().forEach(n => {{
    out[n.id()] = n.connectedEdges('.primary').map(e =>
      e.source().id() === n.id() ? e.target().id() : e.source().id()).sort();
  }});
  return out; }})()"""
DEPTHS = f"Object.fromEntries({GRAPH}.nodes().map(n => [n.id(), n.data('depth') ?? null]))"


def start_peers(procs: Procs, tmp_path: Path, url: str, count: int, *args: str) -> str:
    """``count`` peers of a new CoreTree (the first creates it); its overlay-id."""
    owner = ("--set", f"admin_key={CORE_ADMIN_KEY}")  # a sub-overlay needs the owner's consent
    root = PeerProc(tmp_path, url, "p00", "--create", "ui-tree", *owner, *PEER_ARGS, *args)
    procs.append(root)
    root.wait_joined()
    others = [
        PeerProc(tmp_path, url, f"p{i:02d}", "--join", root.overlay_id, *PEER_ARGS, *args)
        for i in range(1, count)
    ]
    procs.extend(others)
    for peer in others:
        peer.wait_joined(120)
    return root.overlay_id


def type_token(browser: Browser, token: str) -> None:
    quoted = json.dumps(token)
    browser.evaluate(
        f"document.getElementById('token').value = {quoted};"
        "document.getElementById('login').requestSubmit(); true"
    )


def log_in(browser: Browser, homs: HomsProcess, overlay_id: str) -> None:
    """Open the page, type the operator token into the form, as an operator would."""
    assert homs.operator_token is not None
    browser.navigate(f"{homs.url}/ui/#overlay={overlay_id}")
    browser.wait_for("document.readyState === 'complete' && !!window.hp2pDashboard", 30, "page")
    type_token(browser, homs.operator_token)


def wait_tree(browser: Browser, count: int, deadline: float) -> dict[str, Any]:
    """Wait until the graph shows ``count`` peers, all attached by primary paths."""
    attached = (
        f"(() => {{ const d = {DEPTHS}; const v = Object.values(d);"
        f" return v.length === {count} && v.every(x => x !== null) ? d : null; }})()"
    )
    depths: dict[str, Any] = browser.wait_for(attached, deadline, f"{count} attached peers")
    return depths


@pytest.fixture
def browser() -> Iterator[Browser]:
    assert CHROMIUM is not None
    with Browser(CHROMIUM) as b:
        yield b


@pytest.mark.slow
@needs_chromium
def test_the_graph_follows_the_tree_live(
    tmp_path: Path, homs: HomsProcess, browser: Browser
) -> None:
    procs = Procs()
    try:
        overlay_id = start_peers(procs, tmp_path, homs.url, 7, "--set", "max_children=2")
        browser.navigate(f"{homs.url}/ui/#overlay={overlay_id}")
        browser.wait_for("!!window.hp2pDashboard", 30, "the page")
        type_token(browser, "not-the-token")
        refused = "document.getElementById('status').textContent.includes('refused')"
        browser.wait_for(refused, 10, "a wrong token to be refused")
        assert browser.evaluate("window.hp2pGraph === undefined")  # nothing drawn without it
        log_in(browser, homs, overlay_id)
        depths = wait_tree(browser, 7, 60)
        assert browser.evaluate(NODE_COUNT) == 7
        assert browser.evaluate("window.hp2pDashboard.cspViolations") == []
        assert sorted(depths) == sorted(p.name for p in procs)
        events_before = browser.evaluate("window.hp2pDashboard.events")

        # a peer with children: a non-root whose primary neighbours include deeper peers
        primaries = browser.evaluate(PRIMARIES)
        victim, children = next(
            (peer, [n for n in near if depths[n] > depths[peer]])
            for peer, near in sorted(primaries.items())
            if depths[peer] > 0 and any(depths[n] > depths[peer] for n in near)
        )
        by_name = {p.name: p for p in procs}
        by_name[victim].proc.kill()  # SIGKILL: no leave, the HOMS learns it from the others

        browser.wait_for(
            f"!{GRAPH}.getElementById({victim!r}).nonempty()", 60, f"{victim} to disappear"
        )
        wait_tree(browser, 6, 60)
        after = browser.evaluate(PRIMARIES)
        for child in children:
            assert victim not in after[child]
            assert after[child], f"{child} has no primary path after {victim} died"
        # it was the monitoring stream, not a reload, that changed the picture
        assert browser.evaluate("window.hp2pDashboard.events") > events_before
        repairs = browser.evaluate("window.hp2pDashboard.repairs.map(r => r.text)")
        assert any(victim in text for text in repairs)

        # a sub-overlay fed from this tree appears nested under it, and in its composition
        sub = create(
            "ui-sub",
            title="ui-sub",
            type="sub",
            **{"sub-type": "mesh", "parent-overlay-id": overlay_id, "source-peer-id": "b1"},
        )
        assert httpx.post(f"{homs.url}/homs", json=sub, timeout=10).status_code == 200
        nested = "document.querySelector('#overlay-list li li button')?.textContent || ''"
        assert "ui-sub" in browser.wait_for(nested, 20, "the sub-overlay in the list")
        browser.evaluate("document.querySelector('#overlay-list button').click(); true")
        composition = "document.getElementById('composition').textContent"
        assert "source b1" in browser.wait_for(
            f"{composition}.includes('ui-sub') && {composition}", 20, "the R3 composition"
        )

        # the side panel: click (tap) a peer, see its details and its history
        child = children[0]
        browser.evaluate(f"{GRAPH}.getElementById({child!r}).emit('tap'); true")
        panel = browser.wait_for(
            "!document.getElementById('peer-panel').hidden &&"
            " document.getElementById('peer-panel').innerText",
            10,
            "the peer panel",
        )
        assert child in panel
        assert "ticket" in panel
        assert "tcp://" in panel
        assert "primary" in panel
    finally:
        for proc in procs:
            if proc.proc.poll() is None:
                proc.terminate()


@pytest.mark.slow
@needs_chromium
@pytest.mark.skipif(
    not os.environ.get("HP2P_DASHBOARD_SHOT"),
    reason="set HP2P_DASHBOARD_SHOT=docs/dashboard.png to draw a 30-peer tree and save it",
)
def test_screenshot_of_a_30_peer_tree(tmp_path: Path, homs: HomsProcess, browser: Browser) -> None:
    procs = Procs()
    try:
        overlay_id = start_peers(procs, tmp_path, homs.url, 30, "--set", "max_children=3")
        log_in(browser, homs, overlay_id)
        wait_tree(browser, 30, 120)
        browser.evaluate(f"{GRAPH}.getElementById('p04').emit('tap'); true")
        browser.wait_for("window.hp2pDashboard.history.get('p04')?.length > 0", 60, "p04 events")
        target = Path(os.environ["HP2P_DASHBOARD_SHOT"])
        browser.screenshot(target)
        print(f"saved {target}", file=sys.stderr)
        assert target.stat().st_size > 10_000
    finally:
        for proc in procs:
            if proc.proc.poll() is None:
                proc.terminate()
