"""The IoT service of Q.4100 §9.1 on this machine, in one command.

    python examples/iot/run.py            # or: make iot-demo

It starts, each as its own process on 127.0.0.1: a HOMS (SQLite in a temporary folder), two
MQTT gateways (the CoreTree's sources: site a and site b), three plain CoreTree peers, the R3
bridge (SubTree ``iot-live`` and SubMesh ``iot-history``), two live-state members, two history
members and two simulated sensor fleets publishing to Mosquitto. It shows the live state as it
changes, then asks a history member for the last minute of one topic. Everything it started is
stopped on the way out, whatever happens.

Mosquitto: the one on 127.0.0.1:1883 when it answers, else a private one on a free port.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.live import Live
from rich.table import Table

from hp2p.apps.processes import ProcessGroup
from hp2p.homs.launch import start_homs

console = Console()
DEADLINE = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def broker_answers(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
        return True
    return False


async def wait_http(url: str, limit: float = DEADLINE) -> None:
    deadline = time.monotonic() + limit
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(url, timeout=1.0)).status_code < 500:
                    return
            await asyncio.sleep(0.2)
    raise SystemExit(f"nothing answered at {url} within {limit:.0f} s")


def state_table(state: dict[str, Any], now: float) -> Table:
    table = Table(title="live state on the SubTree (member 1, GET /state)")
    for column in ("topic", "value", "age", "gateway"):
        table.add_column(column)
    items = state.get("topics") or state.get("state") or []
    if isinstance(items, dict):
        items = [{"topic": k, **v} for k, v in items.items()]
    for item in sorted(items, key=lambda i: str(i.get("topic")))[:20]:
        payload = item.get("payload") or item.get("text") or item.get("payload_b64", "")
        value = payload.get("value") if isinstance(payload, dict) else str(payload)[:40]
        stamp = item.get("device_ts") or item.get("received_ts") or now
        table.add_row(
            str(item.get("topic")), str(value), f"{now - float(stamp):.1f} s",
            str(item.get("gateway", "")),
        )  # fmt: skip
    return table


async def demo(seconds: float) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="hp2p-iot-demo-"))
    procs = ProcessGroup(workdir, DEADLINE)
    homs = start_homs(workdir)
    try:
        mqtt_port = 1883
        if not broker_answers(mqtt_port):
            mosquitto = shutil.which("mosquitto") or shutil.which("/usr/sbin/mosquitto")
            if mosquitto is None:
                raise SystemExit("no MQTT broker on 127.0.0.1:1883 and no mosquitto to start")
            mqtt_port = free_port()
            conf = workdir / "mosquitto.conf"
            conf.write_text(f"listener {mqtt_port} 127.0.0.1\nallow_anonymous true\n")
            broker = await asyncio.create_subprocess_exec(
                mosquitto, "-c", str(conf), start_new_session=True,
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
            procs.adopt("mosquitto", broker)
            for _ in range(50):
                if broker_answers(mqtt_port):
                    break
                await asyncio.sleep(0.1)
        mqtt = f"mqtt://127.0.0.1:{mqtt_port}"
        run = f"{int(time.time()) % 100000}"
        prefix = f"demo{run}"
        common = ("--homs", homs.url)
        key = os.urandom(16).hex()
        console.print(f"[bold]HOMS[/] {homs.url}   [bold]MQTT[/] {mqtt}   logs in {workdir}")

        await procs.start(
            "gateway-a", "iot", "gateway", *common, "--mqtt", mqtt, "--topic", f"{prefix}/a/#",
            "--create", f"iot-{run}", "--id", f"gw-a-{run}", "--set", f"admin_key={key}",
            "--json-events",
        )  # fmt: skip
        await procs.wait_event("gateway-a", "joined")
        await procs.start(
            "gateway-b", "iot", "gateway", *common, "--mqtt", mqtt, "--topic", f"{prefix}/b/#",
            "--overlay", f"iot-{run}", "--id", f"gw-b-{run}", "--json-events",
        )  # fmt: skip
        for n in range(3):
            await procs.start(f"core-{n}", "peer", *common, "--join", f"iot-{run}", "--json-events")
        await procs.start(
            "bridge", "iot", "bridge", *common, "--core", f"iot-{run}", "--id", f"b-{run}",
            "--subtree", f"live-{run}", "--submesh", f"history-{run}", "--segment-seconds", "2",
            "--grace", "1", "--core-admin-key", key, "--json-events",
        )  # fmt: skip
        await procs.wait_event("bridge", "joined")
        for site in ("a", "b"):  # subscribed: readings published from now on are not missed
            await procs.wait_event(f"gateway-{site}", "mqtt_connected")
        state_api = f"127.0.0.1:{free_port()}"
        history_api = f"127.0.0.1:{free_port()}"
        await procs.start("state-1", "iot", "state", *common, "--join", f"live-{run}",
                          "--api", state_api)  # fmt: skip
        await procs.start("state-2", "iot", "state", *common, "--join", f"live-{run}")
        await procs.start(
            "history-1", "iot", "history", *common, "--join", f"history-{run}",
            "--db", str(workdir / "history-1.sqlite"), "--api", history_api,
        )  # fmt: skip
        await procs.start(
            "history-2", "iot", "history", *common, "--join", f"history-{run}",
            "--db", str(workdir / "history-2.sqlite"),
        )  # fmt: skip
        await wait_http(f"http://{state_api}/status")
        await wait_http(f"http://{history_api}/status")
        console.print("[green]overlays up[/]: CoreTree, SubTree and SubMesh; sensors start now")
        started = time.time()
        for site in ("a", "b"):
            await procs.start(
                f"sensors-{site}", "iot", "sensor", "--mqtt", mqtt, "--devices", "4",
                "--rate", "20", "--duration", str(seconds), "--prefix", f"{prefix}/{site}",
                "--quiet",
            )  # fmt: skip
        async with httpx.AsyncClient() as client:
            with Live(console=console, refresh_per_second=2) as live:
                while time.time() < started + seconds + 1:
                    with contextlib.suppress(httpx.HTTPError, ValueError):
                        state = (await client.get(f"http://{state_api}/state")).json()
                        live.update(state_table(state, time.time()))
                    await asyncio.sleep(0.5)
            await asyncio.sleep(4)  # the last 2 s slice closes 1 s after it ends, then is pulled
            topic = f"{prefix}/a/dev-0/temperature"
            params: dict[str, str | float] = {
                "topic": topic, "from": started - 60, "to": time.time() + 60, "wait": 5,
            }  # fmt: skip
            answer = (await client.get(f"http://{history_api}/history", params=params)).json()
        readings = answer.get("readings", [])
        console.print()
        console.print(
            f"[bold]history[/] of {topic} from member 1 (GET /history): "
            f"{len(readings)} readings, complete={answer.get('complete')}, "
            f"gaps={answer.get('gaps')}"
        )
        for reading in readings[:3]:
            console.print("   ", json.dumps(reading)[:120])
    finally:
        await procs.stop()
        homs.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="how long sensors publish")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(demo(args.seconds))


if __name__ == "__main__":
    main()
