"""``hp2p bench iot`` end to end on a tiny configuration, and its socket-counter parser.

The smoke run starts real processes on 127.0.0.1 (a private mosquitto, the sensors, a HOMS,
``hp2p iot gateway``, three consumer peers, then three MQTT subscribers, then a gateway, the
IoT bridge and three history members) for a few seconds each: it checks the result file's
keys and that every reading arrived once, not any timing (timing targets are recorded by the
benchmark itself, as passed or failed).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from hp2p.bench.broker import find_mosquitto
from hp2p.bench.iot import iot, real_gateway_available
from hp2p.bench.iot_phase import IotPhase, iot_figures
from hp2p.bench.sockets import Socket, parse_ss, sent_to

app = typer.Typer()
app.command()(iot)

SS_OUTPUT = """\
0      0      127.0.0.1:1883  127.0.0.1:40000 users:(("mosquitto",pid=10,fd=5))
\t cubic rto:204 bytes_sent:900 bytes_acked:801 bytes_received:21 segs_out:2
0      0      127.0.0.1:40000 127.0.0.1:1883  users:(("python",pid=20,fd=7))
\t cubic rto:204 bytes_sent:21 bytes_acked:22 bytes_received:900
0      0      127.0.0.1:1883  127.0.0.1:40001 users:(("mosquitto",pid=10,fd=6))
\t cubic rto:204 bytes_sent:50 bytes_acked:51
0      0      127.0.0.1:40001 127.0.0.1:1883  users:(("python",pid=30,fd=7))
\t cubic bytes_acked:1
"""


def test_ss_output_gives_each_socket_its_owner_and_acked_bytes() -> None:
    sockets = parse_ss(SS_OUTPUT)
    assert sockets[("127.0.0.1:1883", "127.0.0.1:40000")] == Socket(
        "127.0.0.1:1883", "127.0.0.1:40000", 10, 801
    )
    assert len(sockets) == 4
    before = {
        ("127.0.0.1:1883", "127.0.0.1:40000"): Socket("127.0.0.1:1883", "127.0.0.1:40000", 10, 301)
    }
    # pid 10 sent 500 more bytes to pid 20 and 51 (a socket opened since) to pid 30
    assert sent_to(before, sockets, 10, [20]) == 500
    assert sent_to(before, sockets, 10, [20, 30]) == 551
    assert sent_to(before, sockets, 10, [99]) == 0


@given(st.text(max_size=400))
def test_ss_parser_never_raises_on_odd_output(text: str) -> None:
    for sock in parse_ss(text).values():
        assert sock.acked >= 0


@pytest.mark.slow
@pytest.mark.skipif(find_mosquitto() is None, reason="needs the mosquitto binary")
@pytest.mark.skipif(not real_gateway_available(), reason="needs hp2p iot gateway")
def test_tiny_iot_run_delivers_every_reading_and_writes_the_result_file(tmp_path: Path) -> None:
    out = tmp_path / "iot.json"
    png = tmp_path / "iot.png"
    args = ["--peers", "3", "--rates", "40", "--duration", "2"]
    args += ["--history-members", "3", "--history-readings", "300", "--history-rate", "300"]
    result = CliRunner().invoke(app, [*args, "--json", str(out), "--plot", str(png)])
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert doc["benchmark"] == "iot"
    metrics = doc["metrics"]
    base = doc["baselines"]["mosquitto"]
    for key in (
        "delivery_ratio",
        "duplicates",
        "latency_p50_ms",
        "latency_p99_ms",
        "source_bytes_per_msg",
        "source_bytes_ratio_vs_broker",
        "cpu_us_per_delivery",
        "history_query_ms",
        "history_complete",
    ):
        assert key in metrics, key
    for key in ("delivery_ratio", "latency_p50_ms", "latency_p99_ms", "source_bytes_per_msg"):
        assert key in base, key
    assert "cpu_us_per_delivery" in base
    assert metrics["messages"] == 80
    assert metrics["delivery_ratio"] == 1.0
    assert metrics["duplicates"] == 0
    assert base["delivery_ratio"] == 1.0
    # every reading crossed the gateway's links and the broker's subscriber connections
    assert metrics["source_bytes_per_msg"] > 64
    assert base["source_bytes_per_msg"] > 3 * 64
    assert set(doc["targets"]) >= {"delivery", "source_bytes", "latency_p99", "history_query"}
    # the history part: 300 readings into 3 members, one of them SIGKILLed half-way
    assert metrics["history_members_killed"] == 1
    assert metrics["history_readings_packed"] == 300
    assert metrics["history_complete"] == 1.0
    assert metrics["history_query_ms"] > 0
    assert [c["peers"] for c in doc["per_case"]] == [3]
    assert png.stat().st_size > 0


def test_figures_count_each_reading_once_per_consumer_and_split_the_latency() -> None:
    phase = IotPhase(rate=10.0, count=2, first=5)
    phase.sensors = {"published": 2, "elapsed_s": 0.2}
    phase.rows = [
        [(5, 10.05, 10.0, 10.01), (6, 10.15, 10.1, 10.11), (6, 10.3, 10.1, 10.11)],
        [(5, 10.02, 10.0, 10.01)],  # reading 6 never reached this consumer
    ]
    phase.cpu_s = {"source": 0.001, "consumers": 0.002}
    phase.source_links = [2000, 10]
    phase.source_bytes = 2010
    got = iot_figures(phase)
    assert got["delivery_ratio"] == 0.75
    assert got["duplicates"] == 1
    assert got["source_bytes_per_msg"] == 1005.0
    assert got["source_data_links"] == 1  # the 10-byte link carried no readings
    assert got["cpu_us_per_delivery"] == 1000.0  # 3 ms over 3 deliveries
    assert got["latency_to_gateway_p50_ms"] == pytest.approx(10.0)
    assert got["latency_gateway_to_consumer_p99_ms"] == pytest.approx(40.0)
    assert got["kept_up"] is False
