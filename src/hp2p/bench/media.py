"""``hp2p bench media``: live streaming under churn, measured at the viewers (issue #15).

One HOMS process; in this process a test-pattern source (ffmpeg, 640x360, 1 Mbit/s, 2 s
segments) on a CoreTree, ``hp2p media bridge`` feeding a SubTree and a SubMesh, and N viewers
(:class:`~hp2p.apps.media.viewer.MediaViewer`) on the SubTree; recorder *processes* on the
SubMesh. Each minute ``--churn`` of the viewers leave and as many new ones join, spread
evenly. Mid-run 30 % of the recorders are SIGKILLed; at the end the survivors' VOD playlists
are compared with what the source sent.

Keys (see :mod:`hp2p.bench.media_metrics`): ``continuity`` (mean over viewer sessions) and
``continuity_p5``, ``startup_p50_s``/``startup_p99_s`` (join → first segment listed),
``latency_p50_s``/``latency_p99_s`` (capture → listed), ``source_bytes_ratio`` (bytes the
SubTree's source sent / stream bytes; a CDN sends N), ``recording_complete`` (segments held by
the worst surviving recorder / segments sent). Viewers share one event loop with the source
and the bridge, so CPU contention is part of what is measured.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console

from hp2p.bench.events import EventInbox, follow
from hp2p.bench.media_metrics import Session, summarise
from hp2p.bench.results import check_writable, result_document, save_result

__all__ = ["media"]

_DEADLINE = 60.0
_CORE_KEY = "bench-media"


class _Recorder:
    """``hp2p media recorder`` as a child process, followed through its JSON events."""

    def __init__(self, homs: str, name: str, workdir: Path) -> None:
        cmd = [sys.executable, "-m", "hp2p", "media", "recorder", "--homs", homs]
        cmd += ["--join", "media-rec", "--dir", str(workdir / name), "--id", name]
        cmd += ["--api", "127.0.0.1:0", "--json-events"]
        with (workdir / f"{name}.err").open("wb") as err:
            self.proc = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL, text=True
            )
        self.name = name
        self.inbox = EventInbox(name)
        assert self.proc.stdout is not None
        follow(self.proc.stdout, self.inbox.put, name)
        self.url = ""

    async def ready(self) -> None:
        await asyncio.to_thread(self.inbox.next, "joined", _DEADLINE)
        self.url = str((await asyncio.to_thread(self.inbox.next, "api", _DEADLINE))["url"])

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


class _ByteMeter:
    """Bytes a node's links sent, summed over links that come and go (sampled)."""

    def __init__(self) -> None:
        self.seen: dict[Any, int] = {}  # link -> bytes (the link kept: ids are not reused)

    def sample(self, node: Any) -> None:
        for link in list(getattr(node, "_links", {}).values()):
            stats = getattr(link, "stats", None)
            sent = getattr(stats, "bytes_sent", None)
            if isinstance(sent, int):
                self.seen[link] = max(self.seen.get(link, 0), sent)

    @property
    def total(self) -> int:
        return sum(self.seen.values())


class MediaBench:
    """One run; ``await run()`` returns the result document's metrics and the series."""

    def __init__(self, workdir: Path, console: Console, **params: Any) -> None:
        self.workdir = workdir
        self.console = console
        self.p = params
        self.sessions: list[Session] = []
        self.live: dict[str, tuple[Any, Session]] = {}
        self.published: dict[int, float] = {}
        self.stream_bytes = 0
        self.meter = _ByteMeter()
        self.core_meter = _ByteMeter()
        self.rng = random.Random(params["seed"])
        #: the bridge's SubTree source: samples whose forwarding lease had lapsed (it then
        #: holds what it selects until the HOMS confirms it still owns the source peer-id)
        self.lease_lapses = 0
        self.held_max = 0
        self._count = 0
        self._tasks: set[asyncio.Task[Any]] = set()

    async def run(self) -> tuple[dict[str, Any], list[dict[str, float]]]:
        from hp2p.homs.launch import start_homs

        with start_homs(self.workdir, log_level="error") as homs:
            return await self._run(homs.url)

    async def _run(self, homs: str) -> tuple[dict[str, Any], list[dict[str, float]]]:
        from hp2p.apps.media.bridge_command import build_bridge

        source = self._source(homs)
        await source.start()
        core = source.node.membership.overlay_id if source.node.membership else ""
        bridge, _packer = build_bridge(
            homs, core, "b1", "media-live", "media-rec", core_admin_key=_CORE_KEY, on_event=None
        )
        recorders = [_Recorder(homs, f"r{i}", self.workdir) for i in range(self.p["recorders"])]
        try:
            await bridge.start()
            for recorder in recorders:
                await recorder.ready()
            for _ in range(self.p["viewers"]):  # one after another, as people arrive
                await self._join(homs)
            start = time.time()
            streaming = asyncio.ensure_future(source.run())
            await self._steady(homs, bridge, source, recorders, streaming, start)
            end = time.time()
            complete = await self._recording(recorders)
        finally:
            for recorder in recorders:
                recorder.stop()
            await self._close_viewers()
            await bridge.close()
            await source.close()
        return self._figures(start, end, complete)

    # --- parts ---------------------------------------------------------------------------
    def _source(self, homs: str) -> Any:
        from hp2p.apps.media.ffmpeg import SegmenterSettings
        from hp2p.apps.media.source import MediaSource
        from hp2p.peer.node import PeerNode
        from hp2p.peer.settings import NodeSettings

        settings = SegmenterSettings(
            "testsrc", self.p["segment"], self.p["size"], 25, self.p["bitrate"], self.p["seconds"]
        )
        node = PeerNode(
            NodeSettings(homs=homs, create="media-bench", admin_key=_CORE_KEY, peer_id="cam")
        )

        def on_event(kind: str, fields: dict[str, Any]) -> None:
            if kind == "segment":
                self.published[int(fields["sequence"])] = time.time()
                self.stream_bytes += int(fields["size"])

        return MediaSource(node, "cam1", settings, on_event=on_event)

    async def _join(self, homs: str) -> None:
        from hp2p.apps.media.viewer import MediaViewer
        from hp2p.peer.node import NodeError, PeerNode
        from hp2p.peer.settings import NodeSettings

        self._count += 1
        name = f"v{self._count:04d}"
        session = Session(name, time.time())

        def on_event(kind: str, fields: dict[str, Any]) -> None:
            if kind == "listed":
                session.listed[int(fields["sequence"])] = time.time()
                session.latencies.append(float(fields["latency"]))
            elif kind == "missing":
                session.missing += int(fields["last"]) - int(fields["first"]) + 1

        node = PeerNode(NodeSettings(homs=homs, join="media-live", peer_id=name))
        viewer = MediaViewer(node, on_event=on_event)
        self.sessions.append(session)
        self.live[name] = (viewer, session)
        try:
            await viewer.start()
        except NodeError as exc:
            self.console.print(f"[yellow]viewer {name} could not join: {exc}[/]")
            self.live.pop(name, None)
            session.left = time.time()

    async def _churn_one(self, homs: str) -> None:
        if self.live:
            name = self.rng.choice(sorted(self.live))
            viewer, session = self.live.pop(name)
            session.left = time.time()
            await viewer.close()
        await self._join(homs)

    async def _close_viewers(self) -> None:
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        now = time.time()
        for _viewer, session in self.live.values():
            session.left = session.left or now
        # together: each close is bounded by the node's leave timeout
        await asyncio.gather(*(v.close() for v, _s in self.live.values()), return_exceptions=True)
        self.live.clear()

    async def _steady(
        self,
        homs: str,
        bridge: Any,
        source: Any,
        recorders: list[_Recorder],
        streaming: asyncio.Future[Any],
        start: float,
    ) -> None:
        """Sample, churn and kill recorders until the stream ends (then let it drain)."""
        rate = self.p["viewers"] * self.p["churn"] / 60.0
        next_churn = start + (1.0 / rate if rate > 0 else float("inf"))
        kill_at = start + self.p["seconds"] / 2
        killed = False
        tree = bridge._running[0].tree  # the SubTree's source peer
        last_line = start
        while not streaming.done():  # bounded by the source's --duration
            await asyncio.sleep(0.5)
            now = time.time()
            self.meter.sample(tree)
            self.core_meter.sample(source.node)
            self._watch_bridge(bridge)
            while now >= next_churn:  # churn is spread evenly
                task = asyncio.ensure_future(self._churn_one(homs))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
                next_churn += 1.0 / rate
            if not killed and now >= kill_at and len(recorders) > 1:
                for recorder in recorders[
                    : min(len(recorders) - 1, max(1, round(0.3 * len(recorders))))
                ]:
                    recorder.kill()
                killed = True
            if now - last_line >= 10:
                last_line = now
                self.console.print(
                    f"[dim]{now - start:5.0f} s: {len(self.published)} segments, "
                    f"{len(self.live)} viewers, {sum(len(s.listed) for s in self.sessions)} "
                    "listed[/]"
                )
        with contextlib.suppress(BaseException):
            await streaming
        await asyncio.sleep(2 * self.p["segment"] + 1.0)  # the last segments reach viewers
        self.meter.sample(tree)
        self.core_meter.sample(source.node)

    def _watch_bridge(self, bridge: Any) -> None:
        running = bridge._running[0]
        self.held_max = max(self.held_max, len(running.held))
        if asyncio.get_running_loop().time() > running.lease_until:
            self.lease_lapses += 1

    async def _recording(self, recorders: list[_Recorder]) -> float | None:
        """Segments the worst surviving recorder serves / segments sent."""
        sent = set(self.published)
        fractions = []
        deadline = time.monotonic() + _DEADLINE  # one deadline for all of them
        async with httpx.AsyncClient(timeout=10) as client:
            for recorder in recorders:
                if recorder.proc.poll() is not None:
                    continue
                held: set[int] = set()
                while True:  # at least one look at each; bounded by the deadline
                    answer = await client.get(f"{recorder.url}/vod/cam1/index.m3u8")
                    lines = answer.text.splitlines() if answer.status_code == 200 else []
                    held = {int(x[:-3]) for x in lines if x.endswith(".ts")}
                    done = sent <= held and "#EXT-X-ENDLIST" in lines
                    if done or time.monotonic() >= deadline:
                        break
                    await asyncio.sleep(0.5)
                fractions.append(len(sent & held) / len(sent) if sent else 0.0)
        return min(fractions) if fractions else None

    def _figures(
        self, start: float, end: float, complete: float | None
    ) -> tuple[dict[str, Any], list[dict[str, float]]]:
        metrics, series = summarise(self.sessions, self.published, self.p["segment"], end, start)
        sb = self.stream_bytes or 1
        metrics.update(
            segments=len(self.published),
            stream_bytes=self.stream_bytes,
            source_bytes_ratio=round(self.meter.total / sb, 3),
            core_source_bytes_ratio=round(self.core_meter.total / sb, 3),
            recording_complete=complete,
            bridge_lease_lapsed_samples=self.lease_lapses,
            bridge_held_max=self.held_max,
        )
        return metrics, series


def _targets(metrics: dict[str, Any], segment: float, max_children: int) -> dict[str, bool]:
    def at_least(key: str, bound: float) -> bool:
        v = metrics.get(key)
        return v is not None and v >= bound

    def at_most(key: str, bound: float) -> bool:
        v = metrics.get(key)
        return v is not None and v <= bound

    return {
        "continuity>=0.999": at_least("continuity", 0.999),
        "continuity_p5>=0.99": at_least("continuity_p5", 0.99),
        "startup_p99<=2s": at_most("startup_p99_s", 2.0),
        f"latency_p99<={2 * segment + 1:g}s": at_most("latency_p99_s", 2 * segment + 1),
        f"source_bytes_ratio<={max_children + 0.1:g}": at_most(
            "source_bytes_ratio", max_children + 0.1
        ),
        "recording_complete==1": at_least("recording_complete", 1.0),
    }


def media(
    quick: Annotated[
        bool, typer.Option("--quick", help="20 viewers, 40 s, 3 recorders (else 50, 180 s, 6).")
    ] = False,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the result file.")] = None,
    plot: Annotated[
        Path | None, typer.Option("--plot", help="PNG of continuity over time.")
    ] = None,
    viewers: Annotated[int | None, typer.Option(help="Viewers (default 50, quick 20).")] = None,
    seconds: Annotated[float | None, typer.Option(help="Stream seconds (180, quick 40).")] = None,
    churn: Annotated[float, typer.Option(help="Share of viewers replaced per minute.")] = 0.2,
    recorders: Annotated[int | None, typer.Option(help="Recorder processes (6, quick 3).")] = None,
    bitrate: Annotated[str, typer.Option(help="Video bitrate.")] = "1000k",
    size: Annotated[str, typer.Option(help="Video size WxH.")] = "640x360",
    segment: Annotated[float, typer.Option(help="Segment seconds.")] = 2.0,
    seed: Annotated[int, typer.Option(help="Seed of the churn choices.")] = 1,
) -> None:
    """Live media under churn: continuity, startup, latency, source bytes, recording.

    Examples:

      hp2p bench media --quick --json bench-results/media-quick.json

      hp2p bench media --json bench-results/media.json --plot bench-results/plots/media.png
    """
    from hp2p.apps.media.ffmpeg import FfmpegError, ffmpeg_path

    console = Console()
    try:
        ffmpeg_path()
    except FfmpegError as exc:
        console.print(f"[red]hp2p bench media: {exc}[/]")
        raise typer.Exit(2) from None
    check_writable(console, json_path, plot)
    params: dict[str, Any] = {
        "viewers": viewers or (20 if quick else 50),
        "seconds": seconds or (40.0 if quick else 180.0),
        "recorders": recorders or (3 if quick else 6),
        "churn": churn,
        "bitrate": bitrate,
        "size": size,
        "segment": segment,
        "seed": seed,
        "quick": quick,
    }
    if params["viewers"] < 1 or params["recorders"] < 1 or not 0 <= churn <= 1:
        console.print("[red]hp2p bench media: viewers and recorders >= 1, churn in 0..1[/]")
        raise typer.Exit(2)
    with tempfile.TemporaryDirectory(prefix="hp2p-bench-media-") as tmp:
        bench = MediaBench(Path(tmp), console, **params)
        metrics, series = asyncio.run(bench.run())
    from hp2p.peer.config import PeerConfig

    targets = _targets(metrics, segment, PeerConfig().max_children)
    for key, value in metrics.items():
        console.print(f"{key:>26}: {value}")
    for key, ok in targets.items():
        console.print(f"{key:>26}: {'[green]met[/]' if ok else '[red]missed[/]'}")
    document = result_document("media", params=params, metrics=metrics)
    document["targets"] = targets
    document["continuity_series"] = series
    live_from = min(bench.published.values(), default=float("inf"))
    document["startups_s"] = sorted(
        round(min(x.listed.values()) - x.joined, 3)
        for x in bench.sessions
        if x.listed and x.joined >= live_from
    )
    save_result(console, json_path, document)
    if plot is not None:
        _plot(plot, series, params)
        console.print(f"plot: {plot}")


def _plot(path: Path, series: list[dict[str, float]], params: dict[str, Any]) -> None:
    from hp2p.sim.plots import pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot([p["t"] for p in series], [p["continuity"] for p in series], "-o", ms=3)
    ax.set_ylim(min([0.9, *(p["continuity"] for p in series)]) - 0.01, 1.005)
    ax.set_xlabel("seconds into the stream (by play deadline)")
    ax.set_ylabel("segments on time / due")
    ax.set_title(
        f"Continuity, {params['viewers']} viewers, churn {params['churn']:.0%}/min, "
        f"{params['segment']:g} s segments"
    )
    ax.grid(alpha=0.3)
    save_figure(fig, plt, path)
