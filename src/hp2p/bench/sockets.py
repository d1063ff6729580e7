"""Bytes a process sent to some other processes over loopback TCP, from the kernel's counters.

``/proc/PID/io`` cannot tell what a process sent on its sockets (``wchar`` does not count
``send()``), and a broker's own counters (MQTT ``$SYS``) exist only for a broker. The kernel
keeps ``bytes_acked`` for every TCP socket, which ``ss -tinp`` prints together with the process
that owns it; on 127.0.0.1 both ends of a connection are listed, so the far end's owner is
known too. :func:`snapshot` reads them all at once and :func:`sent_to` sums, between two
snapshots, what one process sent on its connections to a set of other processes: the same
instrument for the gateway peer (its R2 links) and for the broker (its subscribers).

A socket's counter lives as long as the socket: one opened between two snapshots counts from
zero, one closed between them is lost (the benchmarks keep their links open while measuring).
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Collection
from dataclasses import dataclass

_PID = re.compile(r"pid=(\d+)")
_ACKED = re.compile(r"\bbytes_acked:(\d+)")
SS_TIMEOUT_S = 20.0


class SocketCountersError(RuntimeError):
    """``ss`` is missing or failed; the message says what to install or check."""


@dataclass(frozen=True, slots=True)
class Socket:
    """One established TCP socket: its two addresses, owner and bytes the peer acked."""

    local: str
    remote: str
    pid: int | None
    acked: int


Snapshot = dict[tuple[str, str], Socket]


def parse_ss(text: str) -> Snapshot:
    """The sockets in the output of ``ss -tinpH state established`` (two lines per socket).

    Lines that do not look like ss output are skipped: the format is the kernel tool's, not
    ours, and a missing field means "unknown", not an error.
    """
    sockets: Snapshot = {}
    head: list[str] | None = None
    for line in text.splitlines():
        if not line.strip():
            continue
        if not line[0].isspace():
            fields = line.split()
            head = fields if len(fields) >= 4 else None
            if head is not None and _ACKED.search(line):  # one-line output
                _add(sockets, head, line)
                head = None
            continue
        if head is not None:
            _add(sockets, head, " ".join(head) + " " + line)
            head = None
    return sockets


def _add(sockets: Snapshot, head: list[str], text: str) -> None:
    # ``Recv-Q Send-Q Local Peer [users:...]`` (the state column is absent with ``state X``)
    addresses = [f for f in head if ":" in f and not f.startswith("users:")]
    if len(addresses) < 2:
        return
    local, remote = addresses[0], addresses[1]
    pid_match = _PID.search(text)
    acked_match = _ACKED.search(text)
    sockets[(local, remote)] = Socket(
        local,
        remote,
        int(pid_match.group(1)) if pid_match else None,
        int(acked_match.group(1)) if acked_match else 0,
    )


def snapshot() -> Snapshot:
    """Every established TCP socket of this machine with its owner and ``bytes_acked``."""
    try:
        done = subprocess.run(
            ["ss", "-tinpH", "state", "established"],
            capture_output=True,
            text=True,
            timeout=SS_TIMEOUT_S,
            check=False,
        )
    except FileNotFoundError:
        raise SocketCountersError(
            "ss not found: install iproute2 (it reads TCP counters)"
        ) from None
    except subprocess.TimeoutExpired:
        raise SocketCountersError(f"ss did not answer within {SS_TIMEOUT_S:g} s") from None
    if done.returncode != 0:
        raise SocketCountersError(f"ss failed: {done.stderr.strip()[:200]}")
    return parse_ss(done.stdout)


def sent_per_socket(
    before: Snapshot, after: Snapshot, sender: int, receivers: Collection[int]
) -> list[int]:
    """Bytes ``sender`` sent (and had acknowledged) on each of its connections to
    ``receivers`` between two snapshots, largest first."""
    owner = {key[0]: sock.pid for key, sock in after.items()}
    wanted = set(receivers)
    sent = []
    for key, sock in after.items():
        if sock.pid != sender or owner.get(sock.remote) not in wanted:
            continue
        earlier = before.get(key)
        sent.append(sock.acked - (earlier.acked if earlier is not None else 0))
    return sorted(sent, reverse=True)


def sent_to(before: Snapshot, after: Snapshot, sender: int, receivers: Collection[int]) -> int:
    """Bytes ``sender`` sent (and had acknowledged) to ``receivers`` between two snapshots."""
    return sum(sent_per_socket(before, after, sender, receivers))
