"""A standby bridge takes over a SubTree source, with real processes and TCP on 127.0.0.1.

A HOMS, a CoreTree (two ``hp2p peer`` processes), an active bridge b1 whose SubTree source is
``b1-live``, two standby bridges (``--standby-for b1``, the same ``--group-key``; b2 rank 1,
b3 rank 2) and a SubTree of four member processes. c00 publishes without pause, paced only by
the CoreTree delivery at c01. b1 hangs (SIGSTOP) mid-burst and b2 takes over while b3 stands
by; b1 wakes up (SIGCONT) with selected messages to forward and must fence itself instead.
Then b2 is SIGKILLed mid-burst and b3 takes over. Publishing goes on through both takeovers.
Every SubTree member must get every CoreTree message exactly once, by content, from
``b1-live`` numbered 1 … N without a hole: each standby numbered on after the failed source
and replayed only what the SubTree lacked, and the woken bridge published nothing.

The SubTree members are small Python processes around :class:`~hp2p.peer.node.PeerNode` (not
``hp2p peer``) because the test needs each message's bytes, which ``hp2p peer --json-events``
does not print.
"""

from __future__ import annotations

import signal
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from hp2p.bench.events import Event
from hp2p.homs.launch import HomsProcess
from peer_procs import BridgeProc, EventProc, Procs

pytestmark = pytest.mark.slow

MEMBERS = 4
STEADY = 15  # CoreTree messages before each kill, and after the last takeover
BURST = 5  # published right before each kill, without waiting for any delivery
MAX_MESSAGES = 3000  # the bound of each takeover's publishing loop
KEY = "group-secret-for-the-test"

MEMBER = r"""
import asyncio, hashlib, json, sys
from hp2p.peer.node import PeerNode
from hp2p.peer.settings import NodeSettings

def show(kind, **fields):
    print(json.dumps({"event": kind, **fields}), flush=True)

async def main():
    def note(kind, fields):  # the tree's view, on stderr, for a failure's post-mortem
        if kind != "deliver":
            print(json.dumps({"event": kind, **fields}, default=str), file=sys.stderr, flush=True)

    node = PeerNode(
        NodeSettings(homs=sys.argv[1], join=sys.argv[2], peer_id=sys.argv[3]), on_event=note
    )
    sub = node.subscribe(1_000_000)
    await node.start()
    show("joined", peer_id=node.peer_id)

    def out(d):
        show("deliver", source=d.source, sequence=d.sequence, app_id=d.app_id,
             text=d.data.decode(), sha256=hashlib.sha256(d.data).hexdigest())

    async def pump():
        async for d in sub:
            out(d)

    task = asyncio.ensure_future(pump())
    loop = asyncio.get_running_loop()
    while True:
        line = (await loop.run_in_executor(None, sys.stdin.readline)).strip()
        if line == "status":
            while (d := sub.get_nowait()) is not None:
                out(d)
            show("status", state=node.state)
        else:
            break
    task.cancel()
    await node.close()

asyncio.run(main())
"""


class MemberProc(EventProc):
    """A SubTree member printing every delivery with its bytes (see the module docstring)."""

    def __init__(self, workdir: Path, homs_url: str, name: str, overlay: str) -> None:
        super().__init__(workdir, name, [sys.executable, "-c", MEMBER, homs_url, overlay, name])


HEARD: dict[int, list[Event]] = {}  # every event read from a bridge, for failures


def _standby_event(standby: BridgeProc, kinds: set[str], wait: float) -> Event | None:
    """The standby's next event of ``kinds`` within ``wait`` s (others are noted), or None."""
    end = time.monotonic() + wait
    while (left := end - time.monotonic()) > 0:
        event = standby.inbox.get(left)
        if event is None:
            return None
        HEARD.setdefault(standby.proc.pid, []).append(event)
        if event["event"] == "eof":
            raise AssertionError(f"standby exited: {standby.err_path.read_text()[-2000:]}")
        if event["event"] in kinds:
            return event
    return None


def test_two_standby_bridges_take_over_a_subtree_in_turn_exactly_once(
    tmp_path: Path, homs: HomsProcess
) -> None:
    procs = Procs()
    bridges: list[BridgeProc] = []
    try:
        root, other = procs.start_tree(tmp_path, homs.url, ["c00", "c01"], "chain")
        core_id = root.overlay_id
        # the group shares its key and its timing (the active's lease is --takeover-after)
        common = ["--core", core_id, "--subtree", "live", "--group-key", KEY]
        common += ["--takeover-after", "1"]
        active = BridgeProc(tmp_path, homs.url, "--id", "b1", *common)
        bridges.append(active)
        live = active.next_event("joined", 90)["targets"][0]["overlay_id"]
        (tmp_path / "standby").mkdir()
        standbys = []
        for name, rank in (("b2", "1"), ("b3", "2")):
            (tmp_path / name).mkdir()
            standbys.append(
                BridgeProc(
                    tmp_path / name,
                    homs.url,
                    "--id",
                    name,
                    "--standby-for",
                    "b1",
                    "--standby-rank",
                    rank,
                    "--log-level",
                    "info",
                    *common,
                )
            )
            bridges.append(standbys[-1])
        for b in standbys:
            assert _standby_event(b, {"joined"}, 90) is not None, "a standby did not join"
        members = [MemberProc(tmp_path, homs.url, f"t{i}", live) for i in range(MEMBERS)]
        procs.extend(members)
        for m in members:
            m.wait_joined(90)

        texts: list[str] = []

        def publish() -> None:
            text = f"reading {len(texts):05d} from c00"
            texts.append(text)
            root.command(f"publish {text}")
            other.next_event({"deliver"}, 30)  # paced by the CoreTree (a burst lags it by 5)

        got: dict[str, list[dict[str, Any]]] = {m.name: [] for m in members}

        def everyone_has_everything() -> None:
            """Each member has every text so far (then the next source is killed)."""
            for m in members:
                have = {d["text"] for d in got[m.name]}
                for _ in range(len(texts) - len(have) + 100):  # bounded; duplicates allowed
                    if have >= set(texts):
                        break
                    d = m.next_event({"deliver"}, 60)
                    got[m.name].append(d)
                    have.add(d["text"])
                assert have >= set(texts), (m.name, sorted(set(texts) - have)[:5])

        takeovers: list[tuple[float, dict[str, Any]]] = []
        for victim, heir in ((active, standbys[0]), (standbys[0], standbys[1])):
            for _ in range(STEADY):
                publish()
            everyone_has_everything()  # the current source reaches the whole SubTree
            burst = len(texts)
            for _ in range(BURST):  # around the kill: forwarded to all, to some or to none
                texts.append(f"reading {len(texts):05d} from c00")
                root.command(f"publish {texts[-1]}")
            for _ in range(MAX_MESSAGES):  # c00's k-th message (from 0) is its sequence k + 1
                if victim.next_event("forwarded", 30)["core_sequence"] >= burst + 2:
                    break
            if victim is active:
                victim.proc.send_signal(signal.SIGSTOP)  # mid-burst: b1 hangs
            else:
                victim.proc.kill()  # mid-burst: the SubTree source dies with its bridge
            killed_at = time.monotonic()
            for _ in range(MAX_MESSAGES):  # publishing goes on through the takeover
                publish()
                # between publishes, listen for the takeover (this is also the pacing)
                event = _standby_event(heir, {"active", "error"}, 0.02)
                if event is not None:
                    break
            else:
                heard = HEARD.get(heir.proc.pid, [])[-20:]
                raise AssertionError(f"no takeover after {MAX_MESSAGES} messages: {heard}")
            assert event["event"] == "active", event
            takeovers.append((time.monotonic() - killed_at, event))
            if heir is standbys[0]:  # the rank-2 standby stood by: it watched b2 take over
                for early in standbys[1].inbox.drain():
                    HEARD.setdefault(standbys[1].proc.pid, []).append(early)
                    assert early["event"] not in ("active", "error"), early
                # b1 wakes up with selected messages to forward, but b2 holds its source
                # peer-id: it must not publish one more message into the SubTree
                active.proc.send_signal(signal.SIGCONT)
                fenced = active.next_event("replaced", 30)
                assert "another bridge of the group holds" in fenced["reason"], fenced
                print(f"\nb1 woke up and fenced itself, dropping {fenced['dropped']} held")
        for _ in range(STEADY):
            publish()
        total = len(texts)
        assert total > 3 * STEADY + 2  # messages were published during both takeovers

        everyone_has_everything()
        for m in members:
            m.command("status")
            m.next_event({"status"}, 30)
            mine = got[m.name] + [e for e in m.seen if e["event"] == "deliver"]
            counts = Counter(d["text"] for d in mine)
            assert counts == Counter(texts), (m.name, counts.most_common(3))
            assert {d["source"] for d in mine} == {"b1-live"}, m.name
            sequences = sorted(d["sequence"] for d in mine)
            assert sequences == list(range(1, total + 1)), m.name  # no hole, none twice
        for seconds, event in takeovers:
            print(
                f"\nSubTree takeover: kill -> active {seconds:.2f} s, replayed "
                f"{event['replayed']}, first new sequence {event['first_sequence']}"
            )
        print(f"{total} messages, each delivered once to each of {MEMBERS} SubTree members")
    finally:
        codes = procs.stop_all()
        for b in bridges:
            b.stop()
    assert all(code == 0 for code in codes.values()), codes
