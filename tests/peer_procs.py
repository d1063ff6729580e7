"""Real ``hp2p peer`` (and other JSON-event) processes on 127.0.0.1, followed through their output.

Nothing here sleeps to synchronise: a HOMS is up when it prints its serving line
(:mod:`hp2p.homs.launch`, the ``homs`` fixture of ``conftest.py``), a peer has joined when it
prints its ``joined`` JSON event (:mod:`hp2p.bench.events`), and every wait has a deadline.
"""

from __future__ import annotations

import contextlib
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Collection, Sequence
from pathlib import Path

import httpx

from homp_bodies import create
from hp2p.bench.events import Event, EventInbox, NoEventError, follow

DEADLINE = 60.0


def readline(proc: subprocess.Popen[str], deadline: float) -> str:
    """One stdout line of ``proc`` ("" at its end or after ``deadline`` seconds)."""
    box: queue.Queue[str] = queue.Queue()
    stdout = proc.stdout
    assert stdout is not None
    threading.Thread(target=lambda: box.put(stdout.readline()), daemon=True).start()
    try:
        return box.get(timeout=deadline)
    except queue.Empty:
        return ""


#: The admin key of every CoreTree the tests create (``homp_bodies.create`` uses it too): the
#: bridges and SubMesh sources of the tests present it as the owner's consent.
CORE_ADMIN_KEY = "admin"


def create_core_overlay(homs_url: str, title: str) -> str:
    """A CoreTree for sub-overlays to hang off (HOMP create over HTTP); its overlay-id."""
    fast = {"heartbeat-interval": 1, "heartbeat-timeout": 3}
    body = create(title=title, description="", **fast)
    answer = httpx.post(f"{homs_url}/homs", json=body, timeout=10)
    answer.raise_for_status()
    overlay_id: str = answer.json()["overlay"]["overlay-id"]
    return overlay_id


def stop_process(proc: subprocess.Popen[str], grace: float = 20.0, term: bool = True) -> int | None:
    """Wait for the process to end (when it was asked to), then SIGTERM, then SIGKILL."""
    for step in ("wait", "term", "kill"):
        if step == "wait" and term:
            continue
        if step == "term":
            proc.send_signal(signal.SIGTERM)
        elif step == "kill":
            proc.kill()
        try:
            return proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            continue
    return proc.returncode


class EventProc:
    """A child process printing JSON event lines, with commands on its stdin.

    A thread reads its stdout into :attr:`inbox`; :meth:`next_event` waits for a kind, and
    the events of other kinds read meanwhile stay in :attr:`seen` for the test to look at.
    """

    def __init__(self, workdir: Path, name: str, cmd: Sequence[str]) -> None:
        self.name = name
        self.err_path = workdir / f"{name}.err"
        with self.err_path.open("wb") as err:
            self.proc = subprocess.Popen(
                list(cmd),
                stdout=subprocess.PIPE,
                stdin=subprocess.PIPE,
                stderr=err,
                text=True,
                bufsize=1,
            )
        self.joined: Event | None = None
        self.inbox = EventInbox(name)
        assert self.proc.stdout is not None
        follow(self.proc.stdout, self.inbox.put, name)

    @property
    def seen(self) -> list[Event]:
        """Events read while waiting for others, oldest first."""
        return self.inbox.kept

    def next_event(self, kinds: str | Collection[str], deadline: float) -> Event:
        """The next event of ``kinds``; the others are kept in :attr:`seen`."""
        try:
            return self.inbox.next(kinds, deadline)
        except NoEventError as exc:
            if not self.inbox.ended:
                raise AssertionError(str(exc)) from None
            raise AssertionError(
                f"{self.name} exited ({self.proc.wait(timeout=10)}): "
                f"{self.err_path.read_text()[-2000:]}"
            ) from None

    def wait_joined(self, deadline: float = DEADLINE) -> Event:
        self.joined = self.next_event("joined", deadline)
        return self.joined

    @property
    def overlay_id(self) -> str:
        """The overlay it joined, from its ``joined`` event."""
        assert self.joined is not None, f"{self.name} has not joined"
        return str(self.joined["overlay_id"])

    def command(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def leave(self) -> None:
        """Ask the process to leave (``leave`` on stdin); :meth:`stop` then waits for it."""
        with contextlib.suppress(BrokenPipeError, OSError, ValueError):  # it has gone already
            self.command("leave")

    def stop(self) -> int | None:
        """Wait for a process that was asked to leave; SIGTERM (then SIGKILL) if it does not."""
        return stop_process(self.proc, term=False)

    def terminate(self) -> int | None:
        """SIGTERM now (then SIGKILL if it does not end)."""
        return stop_process(self.proc)


class PeerProc(EventProc):
    """``hp2p peer --json-events --stdin``."""

    def __init__(self, workdir: Path, homs_url: str, name: str, *args: str) -> None:
        cmd = [sys.executable, "-m", "hp2p", "peer", "--homs", homs_url, "--id", name]
        cmd += ["--json-events", "--stdin", "--log-level", "warning", *args]
        super().__init__(workdir, name, cmd)


class MeshProc(PeerProc):
    """A SubMesh peer process: ``hp2p peer`` (the one runtime) with a fixed seed."""

    def __init__(self, workdir: Path, homs_url: str, name: str, *args: str) -> None:
        # a source creating its SubMesh under a test CoreTree presents the owner's consent
        consent = ["--parent-admin-key", CORE_ADMIN_KEY] if "--parent" in args else []
        super().__init__(workdir, homs_url, name, "--seed", "1", *consent, *args)


class BridgeProc(EventProc):
    """The R3 bridge (``python -m hp2p.apps.bridge --json-events``); stopped by SIGTERM."""

    def __init__(self, workdir: Path, homs_url: str, *args: str) -> None:
        cmd = [sys.executable, "-m", "hp2p.apps.bridge", "--homs", homs_url, "--json-events"]
        cmd += ["--core-admin-key", CORE_ADMIN_KEY]  # consent to the sub-overlays it creates
        super().__init__(workdir, "bridge", [*cmd, *args])

    def stop(self) -> int | None:
        return self.terminate()


class Procs(list[EventProc]):
    """The processes a test started, so that one ``finally`` stops them all."""

    def start_tree(
        self, workdir: Path, homs_url: str, names: Sequence[str], title: str, deadline: float = 90
    ) -> list[PeerProc]:
        """``hp2p peer`` processes: the first creates overlay ``title``, the others join it."""
        root = PeerProc(
            workdir, homs_url, names[0], "--create", title, "--set", f"admin_key={CORE_ADMIN_KEY}"
        )
        self.append(root)
        root.wait_joined()
        joined = ("--join", root.overlay_id)
        others = [PeerProc(workdir, homs_url, name, *joined) for name in names[1:]]
        self.extend(others)
        for peer in others:
            peer.wait_joined(deadline)
        return [root, *others]

    def stop_all(self) -> dict[str, int | None]:
        """Ask every process to leave, then wait for each; their exit statuses by name."""
        for proc in self:
            proc.leave()
        return {proc.name: proc.stop() for proc in self}
