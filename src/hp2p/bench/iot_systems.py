"""The two systems ``hp2p bench iot`` compares, as real processes on 127.0.0.1.

* :class:`Hp2pIot`: a ``hp2p homs``, the gateway (``hp2p iot gateway``, or the bench's
  stand-in) subscribed to the broker and root of a CoreTree, and N consumer peers that join it.
* :class:`MqttIot`: N consumers subscribed to the broker directly (the ``mosquitto`` baseline).

Both grow: :meth:`grow` adds consumers up to N, so one set of processes serves N=20 and then
N=50 (a tree that grew by joins is what a deployment has too). Both name their *source*, the
process whose bytes to the consumers are compared (the gateway peer; the broker), and the
processes whose CPU time the system costs.
"""

from __future__ import annotations

import sys
from pathlib import Path

from hp2p.bench.procs import Fleet, Proc, ProcError
from hp2p.homs.launch import HomsProcess, HomsStartError, start_homs

JOIN_TIMEOUT = 90.0
START_BATCH = 8
OVERLAY_TITLE = "bench-iot"


def _consumer_args(name: str, *how: str) -> list[str]:
    return [sys.executable, "-m", "hp2p.bench.iot_consumer", "--name", name, *how]


class MqttIot:
    """The baseline: N MQTT subscribers of the broker; the source is the broker."""

    kind = "mosquitto"

    def __init__(self, workdir: Path, broker_pid: int, broker_port: int) -> None:
        self.workdir = workdir
        self.fleet = Fleet()
        self.consumers: list[Proc] = []
        self.source_pid = broker_pid
        self._port = broker_port
        workdir.mkdir(parents=True, exist_ok=True)

    def grow(self, n: int) -> None:
        """Start consumers until there are ``n``, in batches, each waited for (``joined``)."""
        while len(self.consumers) < n:
            batch = []
            for i in range(len(self.consumers), min(n, len(self.consumers) + START_BATCH)):
                name = f"sub-{i:04d}"
                args = _consumer_args(name, "--mqtt", str(self._port))
                batch.append(self.fleet.start(name, args, self.workdir / f"{name}.err"))
            for proc in batch:
                proc.wait_event({"joined"}, JOIN_TIMEOUT)
            self.consumers.extend(batch)

    def cost_pids(self) -> dict[str, list[int]]:
        """The processes this system costs, by role."""
        return {"source": [self.source_pid], "consumers": [p.pid for p in self.consumers]}

    def close(self) -> None:
        self.fleet.close()


class Hp2pIot:
    """HOMS, gateway peer (CoreTree root, MQTT subscriber) and N consumer peers."""

    kind = "hp2p"

    def __init__(
        self, workdir: Path, broker_pid: int, broker_port: int, gateway_args: list[str] | None
    ) -> None:
        """``gateway_args``: the command of ``hp2p iot gateway`` with ``{homs}``, ``{port}``
        and ``{title}`` to fill in; None runs the stand-in (:mod:`.iot_gateway_standin`)."""
        self.workdir = workdir
        self.fleet = Fleet()
        self.consumers: list[Proc] = []
        self.broker_pid = broker_pid
        self._port = broker_port
        self._gateway_args = gateway_args
        self.homs: HomsProcess | None = None
        self.gateway: Proc | None = None
        workdir.mkdir(parents=True, exist_ok=True)

    @property
    def source_pid(self) -> int:
        assert self.gateway is not None, "start() first"
        return self.gateway.pid

    def start(self) -> None:
        """The HOMS, then the gateway (it creates the overlay), waited for."""
        try:
            self.homs = start_homs(self.workdir)
        except HomsStartError as exc:
            raise ProcError(str(exc)) from None
        values = {"homs": self.homs.url, "port": str(self._port), "title": OVERLAY_TITLE}
        if self._gateway_args is None:
            args = [sys.executable, "-m", "hp2p.bench.iot_gateway_standin"]
            args += ["--homs", values["homs"], "--create", OVERLAY_TITLE, "--mqtt", values["port"]]
        else:
            args = [a.format(**values) for a in self._gateway_args]
        self.gateway = self.fleet.start("gateway", args, self.workdir / "gateway.err")
        self.gateway.wait_event({"joined"}, JOIN_TIMEOUT)

    def grow(self, n: int) -> None:
        """Start consumer peers until there are ``n``; each batch joins before the next."""
        assert self.homs is not None, "start() first"
        while len(self.consumers) < n:
            batch = []
            for i in range(len(self.consumers), min(n, len(self.consumers) + START_BATCH)):
                name = f"consumer-{i:04d}"
                args = _consumer_args(name, "--homs", self.homs.url, "--join", OVERLAY_TITLE)
                batch.append(self.fleet.start(name, args, self.workdir / f"{name}.err"))
            for proc in batch:
                proc.wait_event({"joined"}, JOIN_TIMEOUT)
            self.consumers.extend(batch)

    def cost_pids(self) -> dict[str, list[int]]:
        """The processes this system costs, by role (the broker serves the gateway)."""
        assert self.homs is not None
        assert self.gateway is not None
        return {
            "source": [self.gateway.pid],
            "consumers": [p.pid for p in self.consumers],
            "broker": [self.broker_pid],
            "homs": [self.homs.pid],
        }

    def close(self) -> None:
        if self.gateway is not None and self.gateway.popen.poll() is None:
            self.gateway.popen.terminate()  # it does not read stdin
        self.fleet.close()
        if self.homs is not None:
            self.homs.stop()
