"""The POC FE's phase table, every transition driven through the core's real inputs.

``hp2p.peer.control.TRANSITIONS`` is the whole state machine of joining and tree recovery.
Each scenario below feeds a core the inputs a real peer would get (HOMP join answers, R2
messages, timers) and records every move; the last test checks that, together, they made
every move of the table, so a transition added to the table without a scenario fails here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from hp2p.peer.control import TRANSITIONS, Control, Event, JoinInfo, Phase, transition
from hp2p.peer.core import PeerCore
from hp2p.peer.effects import Connect, HomsRecoveryJoin, Joined, JoinFailed, Left, ProtocolError
from hp2p.wire.r2.messages import (
    PRIMARY_NO,
    Estab,
    Probe,
    Release,
    SetPrimary,
    SetPrimaryResponse,
    SetPrimaryResponseExt,
)
from test_peer_core import attached, core, join_until_offers, of, probe_all, sends

OV = "ov"
ENTRY = (("entry", "mem://entry"),)
SEEN: set[tuple[Phase, Event]] = set()


@pytest.fixture(autouse=True)
def record(monkeypatch: pytest.MonkeyPatch) -> None:
    original = Control.to

    def to(self: Control, event: Event) -> None:
        SEEN.add((self.phase, event))
        original(self, event)

    monkeypatch.setattr(Control, "to", to)
    return


# --- cores brought to each phase through real inputs ------------------------------------------
def idle() -> PeerCore:
    return core("j")


def hello() -> PeerCore:
    c = core("j")
    c.start(JoinInfo(OV, 50, peers=ENTRY), 0.0)
    assert c.phase is Phase.HELLO
    return c


def waiting(**settings: Any) -> PeerCore:
    """No entry peer answered within hello_timeout: back off before the next attempt."""
    c = core("j", **settings)
    c.start(JoinInfo(OV, 50, peers=ENTRY), 0.0)
    c.handle_timer(c.config.hello_timeout)
    assert c.phase is Phase.WAITING
    return c


def probing(**settings: Any) -> tuple[PeerCore, dict[str, int]]:
    c = core("j", **settings)
    conns = join_until_offers(c, [("p", 2, 1)])
    c.handle_timer(1.0)  # the ESTAB window ends
    assert sends(c.take_effects(), Probe)
    assert c.phase is Phase.PROBING
    return c, conns


def selecting(**settings: Any) -> tuple[PeerCore, dict[str, int]]:
    c, conns = probing(**settings)
    c.handle_timer(1.0 + c.config.probe_timeout)  # nobody answered PROBE: rank without RTTs
    assert sends(c.take_effects(), SetPrimary)
    assert c.phase is Phase.SELECTING
    return c, conns


def attached_root() -> PeerCore:
    c = core("root")
    c.start(JoinInfo(OV, 1, root=True), 0.0)
    assert c.phase is Phase.ATTACHED
    return c


def failed() -> PeerCore:
    c = core("j", join_attempts=1)
    c.start(JoinInfo(OV, 50, peers=ENTRY), 0.0)
    c.handle_timer(c.config.hello_timeout)
    assert of(c.take_effects(), JoinFailed)
    assert c.phase is Phase.FAILED
    return c


PHASES: dict[Phase, Callable[[], PeerCore]] = {
    Phase.IDLE: idle,
    Phase.HELLO: hello,
    Phase.PROBING: lambda: probing()[0],
    Phase.SELECTING: lambda: selecting()[0],
    Phase.WAITING: waiting,
    Phase.ATTACHED: attached_root,
    Phase.FAILED: failed,
}


# --- the table itself -------------------------------------------------------------------------
def test_the_table_answers_for_every_pair_and_only_for_its_own() -> None:
    for phase in Phase:
        for event in Event:
            assert transition(phase, event) == TRANSITIONS.get((phase, event))
    assert all(
        target is not Phase.IDLE or e is Event.RESET for (_, e), target in TRANSITIONS.items()
    )
    assert not any(p is Phase.LEFT for p, _ in TRANSITIONS)  # LEFT is final


def test_a_move_the_table_does_not_have_is_an_internal_error_not_a_crash() -> None:
    c = idle()
    c.poc.to(Event.ATTACH)
    assert c.phase is Phase.IDLE
    errors = of(c.take_effects(), ProtocolError)
    assert errors
    assert "no attach move from idle" in errors[0].reason


# --- joining ----------------------------------------------------------------------------------
def test_root() -> None:
    c = attached_root()
    assert of(c.take_effects(), Joined)[0].parent is None


def test_hello_probe_select_attach() -> None:
    c = core("j")
    conns = join_until_offers(c, [("p", 2, 1)])
    assert c.phase is Phase.HELLO
    probe_all(c, 1.0, {conns["p"]: 0.01})  # window over: PROBE; the answer: SET_PRIMARY
    assert c.phase is Phase.SELECTING
    c.receive(conns["p"], SetPrimaryResponse(hp2p=SetPrimaryResponseExt(depth=1)), 1.2)
    assert c.phase is Phase.ATTACHED


def test_probing_select_then_attach() -> None:
    c, conns = selecting()
    c.receive(conns["p"], SetPrimaryResponse(hp2p=SetPrimaryResponseExt(depth=1)), 1.5)
    assert c.phase is Phase.ATTACHED
    assert of(c.take_effects(), Joined)[0].parent == "p"


def test_no_answer_then_retry_then_an_estab_in_waiting_is_selected_at_once() -> None:
    c = waiting()
    conn = c.accept(0.5)
    c.receive(conn, Estab(overlay_id=OV, peer_id="late", ticket_id=3), 0.5)
    assert c.phase is Phase.SELECTING
    assert sends(c.take_effects(), SetPrimary)[0].conns == (conn,)


def test_waiting_over_asks_the_homs_and_a_root_answer_makes_the_root() -> None:
    c = waiting()
    c.take_effects()
    c.handle_timer(c.config.hello_timeout + c.config.backoff_max + 1)
    assert of(c.take_effects(), HomsRecoveryJoin)
    assert c.phase is Phase.WAITING
    c.homs_result([], c.config.backoff_max + 5, root=True)
    assert c.phase is Phase.ATTACHED


def test_a_refused_selection_retries_and_the_last_allowed_one_gives_up() -> None:
    c, conns = selecting()
    c.receive(conns["p"], SetPrimaryResponse(code=PRIMARY_NO), 1.5)
    assert c.phase is Phase.WAITING
    c, conns = selecting(join_attempts=1)
    c.receive(conns["p"], SetPrimaryResponse(code=PRIMARY_NO), 1.5)
    assert c.phase is Phase.FAILED


def test_no_entry_peer_answering_on_the_last_attempt_gives_up() -> None:
    assert failed().phase is Phase.FAILED


# --- tree recovery ----------------------------------------------------------------------------
def test_recovery_candidates_then_homs_then_hello_then_candidates_again() -> None:
    c, conns = attached()
    c.receive(conns["parent"], Release(), 3.0)  # ATTACHED -> SELECTING (candidates first)
    assert c.phase is Phase.SELECTING
    c.receive(conns["gp"], SetPrimaryResponse(code=PRIMARY_NO), 3.1)
    c.receive(conns["cand"], SetPrimaryResponse(code=PRIMARY_NO), 3.2)
    assert c.phase is Phase.WAITING  # SELECTING -> WAITING: the HOMS is asked
    c.homs_result([("older", "mem://older")], 3.3)
    assert c.phase is Phase.HELLO  # WAITING -> HELLO
    c.take_effects()
    c.handle_timer(3.3 + c.config.hello_timeout)  # nobody volunteers; candidates are asked
    assert c.phase is Phase.SELECTING  # HELLO -> SELECTING
    c.receive(conns["gp"], SetPrimaryResponse(code=PRIMARY_NO), 6.0)
    c.receive(conns["cand"], SetPrimaryResponse(code=PRIMARY_NO), 6.1)
    assert c.phase is Phase.WAITING  # SELECTING -> WAITING (retry)


def test_a_parent_lost_with_no_candidate_goes_to_the_homs_at_once() -> None:
    c = core("j", max_outgoing_candidates=0)
    conns = join_until_offers(c, [("parent", 2, 1)])
    probe_all(c, 1.0, {conns["parent"]: 0.01})
    c.receive(conns["parent"], SetPrimaryResponse(hp2p=SetPrimaryResponseExt(depth=1)), 1.1)
    assert c.phase is Phase.ATTACHED
    c.take_effects()
    c.receive(conns["parent"], Release(), 2.0)
    assert c.phase is Phase.WAITING
    assert of(c.take_effects(), HomsRecoveryJoin)


# --- reset and leave from every phase ---------------------------------------------------------
@pytest.mark.parametrize("phase", list(PHASES), ids=lambda p: p.value)
def test_restart_from_every_phase_starts_over(phase: Phase) -> None:
    c = PHASES[phase]()
    c.restart(JoinInfo(OV, 77, peers=ENTRY), 9.0)
    assert c.phase is Phase.HELLO
    assert c.ticket == 77
    assert of(c.take_effects(), Connect)


@pytest.mark.parametrize("phase", list(PHASES), ids=lambda p: p.value)
def test_leave_from_every_phase_ends_in_left(phase: Phase) -> None:
    c = PHASES[phase]()
    c.leave(9.0)
    assert c.phase is Phase.LEFT
    assert of(c.take_effects(), Left)


def test_every_move_of_the_table_is_made_by_some_scenario() -> None:
    """The scenarios above, run again here so that this test stands on its own."""
    SEEN.clear()
    scenarios = [
        test_root,
        test_hello_probe_select_attach,
        test_probing_select_then_attach,
        test_no_answer_then_retry_then_an_estab_in_waiting_is_selected_at_once,
        test_waiting_over_asks_the_homs_and_a_root_answer_makes_the_root,
        test_a_refused_selection_retries_and_the_last_allowed_one_gives_up,
        test_no_entry_peer_answering_on_the_last_attempt_gives_up,
        test_recovery_candidates_then_homs_then_hello_then_candidates_again,
        test_a_parent_lost_with_no_candidate_goes_to_the_homs_at_once,
    ]
    for scenario in scenarios:
        scenario()
    for phase in PHASES:
        test_restart_from_every_phase_starts_over(phase)
        test_leave_from_every_phase_ends_in_left(phase)
    missing = sorted((p.value, e.value) for p, e in set(TRANSITIONS) - SEEN)
    assert missing == []
