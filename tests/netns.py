"""Hosts behind real NATs on one machine: network namespaces, veth pairs and Linux NAT.

The NAT tests (issue #12) build this topology, all of it inside namespaces the test made, so
the host's own interfaces, addresses, routes and firewall are never touched::

                       "public" namespace  (HOMS, coturn, public peers)
                       bridge wan: 198.18.R.1/24 and 198.18.R.2/24
                  ┌───────────────┴────────────────┐
     NAT "cone"   wan 198.18.R.11          NAT "sym"  wan 198.18.R.12
     masquerade persistent                 masquerade random
     bridge lan 10.R.1.1/24                bridge lan 10.R.2.1/24
        ├─ home cone-0  10.R.1.10             ├─ home sym-0  10.R.2.10
        └─ home cone-1  10.R.1.11             └─ home sym-1  10.R.2.11   (default route: its NAT)

``R`` is random per run (198.18.0.0/15 is the benchmarking range of RFC 2544, 10/8 private;
nothing outside the namespaces sees either). Every name carries a per-run token, so parallel
runs do not collide. The NAT routers have no default route: a packet for another home's
private network, or for the public side of nothing, fails at once with "network unreachable"
instead of vanishing (on the Internet it would vanish, and a dial would time out).

What Linux NAT gives (documented in docs/deploy.md too):

* ``masquerade`` keeps the source port when it is free, and one internal endpoint keeps its
  mapping for every destination as long as nothing collides: endpoint-independent mapping in
  practice (``persistent`` only pins the address when there are several; full-cone NAT is not
  in mainline Linux). Filtering is conntrack's: only replies to a flow that went out come
  back, i.e. address-and-port-dependent filtering, a "port-restricted cone" NAT.
* ``masquerade random`` draws the port from a hash of the flow (source, destination): a new
  mapping per destination, a symmetric NAT.
* The router drops unsolicited UDP to its own public address, as home routers do. Without
  that, Linux confirms a conntrack entry for a hole-punching packet that arrives before the
  home's own first packet to that peer, and the home's mapping is then moved to another port
  (the tuple is taken): ICE between two cone NATs fails. Dropped in ``input``, the entry is
  never confirmed.
* A port forward is a ``dnat`` rule on the NAT's public address, with hairpinning (a home
  dialling its own NAT's public address reaches the forwarded home).

Helpers run processes inside a namespace (``ip netns exec NS env PYTHONPATH=…``, so the
child runs this checkout's code with this interpreter), start a HOMS
(:class:`hp2p.homs.launch.HomsProcess` with a prefix) and coturn, and ask a STUN server for
the mapped address of one UDP socket (:func:`stun_binding`, RFC 5389, no dependency).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import ipaddress
import json
import os
import random
import re
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hp2p
from hp2p.homs.launch import HomsProcess

#: The source tree of the hp2p under test: children in a namespace import it from here.
SRC = str(Path(hp2p.__file__).resolve().parents[1])
TESTS = str(Path(__file__).resolve().parent)

STUN_PORT = 3478
TURN_USER = "hp2p"
TURN_PASSWORD = "nat-test-secret"
TURN_REALM = "hp2p.test"

_MAGIC = 0x2112A442
_USAGE_FIELD = re.compile(r"\b(rp|rb|sp|sb)=(\d+)")


class TopologyError(RuntimeError):
    """A command that builds the topology failed; the message has its stderr."""


def _run(*argv: str, stdin: str | None = None) -> str:
    done = subprocess.run(list(argv), input=stdin, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise TopologyError(f"{' '.join(argv)}: {done.stderr.strip() or done.returncode}")
    return done.stdout


def nat_tool() -> str | None:
    """``nft`` (preferred) or ``iptables``, whichever is installed; ``HP2P_NAT_TOOL`` forces."""
    forced = os.environ.get("HP2P_NAT_TOOL")
    for tool in [forced] if forced else ["nft", "iptables"]:
        if tool and shutil.which(tool):
            return tool
    return None


def why_unavailable() -> str | None:
    """Why NAT tests cannot run here (None: they can): root, ``ip``, a NAT tool, namespaces."""
    if not sys.platform.startswith("linux"):
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "network namespaces need root (run the NAT tests as root)"
    if not shutil.which("ip"):
        return "no `ip` command (apt-get install iproute2, or `make nat-deps`)"
    if nat_tool() is None:
        return "neither nft nor iptables is installed (`make nat-deps`)"
    probe = f"hp2p-probe-{secrets.token_hex(3)}"
    try:
        _run("ip", "netns", "add", probe)
    except (TopologyError, OSError, subprocess.SubprocessError) as exc:
        return f"cannot create a network namespace: {exc}"
    with contextlib.suppress(TopologyError, OSError, subprocess.SubprocessError):
        _run("ip", "netns", "del", probe)
    return None


def why_no_coturn() -> str | None:
    if not shutil.which("turnserver"):
        return "coturn's turnserver is not installed (`make nat-deps`: apt-get install coturn)"
    return None


@dataclass
class Nat:
    """A NAT router namespace: public side ``wan``, private side bridge ``lan``."""

    name: str  # "cone", "sym" …
    kind: str  # "cone" (masquerade persistent) or "sym" (masquerade random)
    ns: str
    wan_ip: str
    lan_ip: str
    lan_net: str
    homes: list[Home] = field(default_factory=list)


@dataclass
class Home:
    """A host behind a NAT: its own namespace, one interface ``eth0``, default route via it."""

    name: str  # "cone-0" …
    ns: str
    ip: str
    nat: Nat


class Topology:
    """The namespaces of one test; :meth:`close` removes all of them and what runs in them.

    Use :func:`topology` (a context manager) so that a failure half-way still cleans up.
    """

    def __init__(self, homes_per_nat: int = 2, nats: dict[str, str] | None = None) -> None:
        self.tool = nat_tool() or "nft"
        self.token = secrets.token_hex(3)
        r = random.SystemRandom().randrange(0, 256)
        self.public_net = f"198.18.{r}.0/24"
        self.public_ip = f"198.18.{r}.1"  # HOMS, coturn, public peers
        self.public_ip2 = f"198.18.{r}.2"  # a second server address (STUN mapping checks)
        self.public_ns = f"hp2p-{self.token}-pub"
        self.namespaces: list[str] = []
        self.procs: list[subprocess.Popen[str] | subprocess.Popen[bytes]] = []
        self.nats: dict[str, Nat] = {}
        self._homes_per_nat = homes_per_nat
        self._subnet = r
        #: NAT name → kind ("cone" or "sym"); NAT k (from 1) is 198.18.R.(10+k), LAN 10.R.k.0/24
        self.nat_kinds = nats or {"cone": "cone", "sym": "sym"}
        if len(self.nat_kinds) > 9 or set(self.nat_kinds.values()) - {"cone", "sym"}:
            raise ValueError(f"at most 9 NATs of kinds cone and sym: {self.nat_kinds}")

    # --- building -----------------------------------------------------------------------
    def _add_ns(self, ns: str) -> None:
        _run("ip", "netns", "add", ns)
        self.namespaces.append(ns)
        _run("ip", "-n", ns, "link", "set", "lo", "up")

    def build(self) -> Topology:
        pub = self.public_ns
        self._add_ns(pub)
        _run("ip", "-n", pub, "link", "add", "wan", "type", "bridge")
        _run("ip", "-n", pub, "addr", "add", f"{self.public_ip}/24", "dev", "wan")
        _run("ip", "-n", pub, "addr", "add", f"{self.public_ip2}/24", "dev", "wan")
        _run("ip", "-n", pub, "link", "set", "wan", "up")
        for k, (name, kind) in enumerate(self.nat_kinds.items(), start=1):
            self._build_nat(name, kind, k)
        return self

    def _build_nat(self, name: str, kind: str, k: int) -> None:
        r = self._subnet
        ns = f"hp2p-{self.token}-nat{name}"
        self._add_ns(ns)
        nat = Nat(name, kind, ns, f"198.18.{r}.{10 + k}", f"10.{r}.{k}.1", f"10.{r}.{k}.0/24")
        self.nats[name] = nat
        # public side: a veth from the public bridge to the router's "wan"
        _veth(self.public_ns, f"n{k}", ns, "wan")
        _run("ip", "-n", self.public_ns, "link", "set", f"n{k}", "master", "wan", "up")
        _run("ip", "-n", ns, "addr", "add", f"{nat.wan_ip}/24", "dev", "wan")
        _run("ip", "-n", ns, "link", "set", "wan", "up")
        # private side: a bridge "lan", one veth per home
        _run("ip", "-n", ns, "link", "add", "lan", "type", "bridge")
        _run("ip", "-n", ns, "addr", "add", f"{nat.lan_ip}/24", "dev", "lan")
        _run("ip", "-n", ns, "link", "set", "lan", "up")
        self.sysctl(ns, "net.ipv4.ip_forward", "1")
        for key in ("bridge-nf-call-iptables", "bridge-nf-call-ip6tables"):
            # bridged LAN traffic must not go through the router's forward filter
            with contextlib.suppress(TopologyError):
                self.sysctl(ns, f"net.bridge.{key}", "0")
        for j in range(self._homes_per_nat):
            home = Home(f"{name}-{j}", f"hp2p-{self.token}-{name}{j}", f"10.{r}.{k}.{10 + j}", nat)
            self._add_ns(home.ns)
            _veth(ns, f"h{j}", home.ns, "eth0")
            _run("ip", "-n", ns, "link", "set", f"h{j}", "master", "lan", "up")
            _run("ip", "-n", home.ns, "addr", "add", f"{home.ip}/24", "dev", "eth0")
            _run("ip", "-n", home.ns, "link", "set", "eth0", "up")
            _run("ip", "-n", home.ns, "route", "add", "default", "via", nat.lan_ip)
            nat.homes.append(home)
        self._masquerade(nat, "persistent" if kind == "cone" else "random")

    def sysctl(self, ns: str, key: str, value: str) -> None:
        path = "/proc/sys/" + key.replace(".", "/")
        self.run(ns, "sh", "-c", f"echo {value} > {path}")

    def _masquerade(self, nat: Nat, flag: str) -> None:
        if self.tool == "nft":
            rules = f"""
table ip hp2p_nat {{
  chain prerouting {{ type nat hook prerouting priority dstnat; policy accept; }}
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    oifname "wan" masquerade {flag}
    oifname "lan" ip saddr {nat.lan_net} ct status dnat masquerade
  }}
  chain input {{
    type filter hook input priority filter; policy accept;
    iifname "wan" meta l4proto udp ct state new drop
  }}
  chain forward {{
    type filter hook forward priority filter; policy drop;
    ct state established,related accept
    iifname "lan" accept
    ct status dnat accept
  }}
}}
"""
            self.run(nat.ns, "nft", "-f", "-", stdin=rules)
            return
        ipt = ("iptables", "-w")
        random_flag = ["--random"] if flag == "random" else []  # MASQUERADE has no --persistent
        self.run(
            nat.ns, *ipt, "-t", "nat", "-A", "POSTROUTING", "-o", "wan", "-j", "MASQUERADE",
            *random_flag,
        )  # fmt: skip
        self.run(
            nat.ns, *ipt, "-t", "nat", "-A", "POSTROUTING", "-o", "lan", "-s", nat.lan_net,
            "-m", "conntrack", "--ctstate", "DNAT", "-j", "MASQUERADE",
        )  # fmt: skip
        self.run(
            nat.ns, *ipt, "-A", "INPUT", "-i", "wan", "-p", "udp", "-m", "conntrack",
            "--ctstate", "NEW", "-j", "DROP",
        )  # fmt: skip
        self.run(nat.ns, *ipt, "-P", "FORWARD", "DROP")
        self.run(
            nat.ns, *ipt, "-A", "FORWARD", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED",
            "-j", "ACCEPT",
        )  # fmt: skip
        self.run(nat.ns, *ipt, "-A", "FORWARD", "-i", "lan", "-j", "ACCEPT")
        self.run(
            nat.ns, *ipt, "-A", "FORWARD", "-m", "conntrack", "--ctstate", "DNAT", "-j", "ACCEPT"
        )

    def forward(self, home: Home, port: int, home_port: int | None = None) -> str:
        """A TCP port forward NAT_PUBLIC_IP:port → home:home_port; the public ``host:port``."""
        nat, to = home.nat, f"{home.ip}:{home_port or port}"
        if self.tool == "nft":
            rule = f"ip daddr {nat.wan_ip} tcp dport {port} dnat to {to}"
            self.run(nat.ns, "nft", "add", "rule", "ip", "hp2p_nat", "prerouting", *rule.split())
        else:
            self.run(
                nat.ns, "iptables", "-w", "-t", "nat", "-A", "PREROUTING", "-d", nat.wan_ip,
                "-p", "tcp", "--dport", str(port), "-j", "DNAT", "--to-destination", to,
            )  # fmt: skip
        return f"{nat.wan_ip}:{port}"

    def ruleset(self, nat: Nat) -> str:
        if self.tool == "nft":
            return self.run(nat.ns, "nft", "list", "ruleset")
        return self.run(nat.ns, "iptables-save")

    # --- running things inside ----------------------------------------------------------
    @property
    def homes(self) -> list[Home]:
        return [home for nat in self.nats.values() for home in nat.homes]

    def prefix(self, ns: str) -> list[str]:
        """Run a command in ``ns`` with this checkout's hp2p on its path."""
        path = os.pathsep.join([SRC, TESTS])
        return ["ip", "netns", "exec", ns, "env", f"PYTHONPATH={path}"]

    def run(self, ns: str, *argv: str, stdin: str | None = None) -> str:
        return _run(*self.prefix(ns), *argv, stdin=stdin)

    def popen(self, ns: str, argv: Sequence[str], **kwargs: object) -> subprocess.Popen[str]:
        """A process in ``ns``, stopped by :meth:`close` if the test has not stopped it."""
        proc: subprocess.Popen[str] = subprocess.Popen(  # type: ignore[call-overload]
            [*self.prefix(ns), *argv], text=True, **kwargs
        )
        self.procs.append(proc)
        return proc

    def python(self, ns: str, code: str, timeout: float = 20) -> str:
        """Run a Python snippet in ``ns`` (this interpreter); its stdout."""
        done = subprocess.run(
            [*self.prefix(ns), sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if done.returncode != 0:
            raise TopologyError(f"python in {ns}: {done.stderr.strip()[-2000:]}")
        return done.stdout

    def tcp_dial(self, ns: str, host: str, port: int, timeout: float = 3.0) -> str:
        """Dial ``host:port`` from ``ns``: "ok", or the error's name (ECONNREFUSED, timeout …)."""
        code = (
            "import errno, socket\n"
            f"s = socket.socket(); s.settimeout({timeout})\n"
            f"try:\n    s.connect(({host!r}, {port})); print('ok')\n"
            "except socket.timeout:\n    print('timeout')\n"
            "except OSError as e:\n    print(errno.errorcode.get(e.errno, str(e)))\n"
        )
        return self.python(ns, code, timeout=timeout + 15).strip()

    def start_homs(self, workdir: Path, *extra: str) -> HomsProcess:
        """``hp2p homs --host PUBLIC_IP`` in the public namespace, once it serves."""
        homs = HomsProcess(
            workdir, None, "--host", self.public_ip, *extra, prefix=self.prefix(self.public_ns)
        )
        self.procs.append(homs.proc)
        return homs.wait_ready()

    def start_coturn(self, workdir: Path, deadline: float = 30.0) -> Coturn:
        """coturn (STUN + TURN, no TLS) on both public addresses, once it answers STUN."""
        turn = Coturn(self, workdir)
        self.procs.append(turn.proc)
        turn.wait_ready(deadline)
        return turn

    def stun(
        self, ns: str, servers: Sequence[tuple[str, int]], local_port: int = 0
    ) -> list[tuple[str, int]]:
        """From ONE UDP socket in ``ns`` (bound to ``local_port``), the mapped address that
        each STUN server sees."""
        code = (
            "import json, socket, netns\n"
            "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            f"s.bind(('0.0.0.0', {local_port}))\n"
            f"print(json.dumps([netns.stun_binding(s, tuple(a)) for a in {list(servers)!r}]))\n"
        )
        return [(h, p) for h, p in json.loads(self.python(ns, code))]

    def turn(self, ns: str, server: tuple[str, int], user: str, password: str) -> tuple[str, int]:
        """A TURN allocation from ``ns``: the relayed address coturn gives."""
        code = (
            "import json, socket, netns\n"
            "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            f"print(json.dumps(netns.turn_allocate(s, {server!r}, {user!r}, {password!r})))\n"
        )
        host, port = json.loads(self.python(ns, code))
        return host, port

    def turn_relay(self, ns: str, server: tuple[str, int]) -> dict[str, Any]:
        """:func:`turn_relay_check` run in ``ns`` with the test credential."""
        code = (
            "import json, netns\n"
            f"print(json.dumps(netns.turn_relay_check({server!r}, {TURN_USER!r}, "
            f"{TURN_PASSWORD!r})))\n"
        )
        result: dict[str, Any] = json.loads(self.python(ns, code))
        return result

    # --- tearing down -------------------------------------------------------------------
    def close(self) -> None:
        """Kill what runs in the namespaces, then delete them (their veths go with them)."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=10)
        for ns in reversed(self.namespaces):
            # anything else still inside (a grandchild) was started by this test
            with contextlib.suppress(TopologyError, OSError, subprocess.SubprocessError):
                for pid in _run("ip", "netns", "pids", ns).split():
                    with contextlib.suppress(ProcessLookupError, ValueError):
                        os.kill(int(pid), signal.SIGKILL)
            with contextlib.suppress(TopologyError, OSError, subprocess.SubprocessError):
                _run("ip", "netns", "del", ns)
        self.namespaces.clear()


def _veth(ns_a: str, name_a: str, ns_b: str, name_b: str) -> None:
    """A veth pair created straight in its two namespaces (never in the host's)."""
    _run(
        "ip", "-n", ns_a, "link", "add", name_a, "type", "veth", "peer", "name", name_b,
        "netns", ns_b,
    )  # fmt: skip


@contextlib.contextmanager
def topology(homes_per_nat: int = 2, nats: dict[str, str] | None = None) -> Iterator[Topology]:
    """A built :class:`Topology`, removed at the end whatever happens."""
    topo = Topology(homes_per_nat, nats)
    try:
        yield topo.build()
    finally:
        topo.close()


def namespaces_of(token: str) -> list[str]:
    """The namespaces whose name carries ``token`` (to check that nothing is left over)."""
    out = _run("ip", "netns", "list")
    return [line.split()[0] for line in out.splitlines() if token in line]


# --- coturn ---------------------------------------------------------------------------------


class Coturn:
    """``turnserver`` with a generated config in the public namespace."""

    def __init__(self, topo: Topology, workdir: Path) -> None:
        self.topo = topo
        self.log = workdir / "turnserver.log"
        self.config = workdir / "turnserver.conf"
        self.servers = [(topo.public_ip, STUN_PORT), (topo.public_ip2, STUN_PORT)]
        self.config.write_text(coturn_config(topo.public_ip, topo.public_ip2, workdir))
        self.stderr = (workdir / "turnserver.err").open("wb")
        self.proc = topo.popen(
            topo.public_ns,
            ["turnserver", "-c", str(self.config)],
            stdin=subprocess.DEVNULL,
            stdout=self.stderr,
            stderr=self.stderr,
        )

    def stun_url(self) -> str:
        return f"stun:{self.topo.public_ip}:{STUN_PORT}"

    def turn_url(self) -> str:
        return f"turn:{TURN_USER}:{TURN_PASSWORD}@{self.topo.public_ip}:{STUN_PORT}"

    def peer_usage(self, deadline: float) -> list[dict[str, int]]:
        """The peer-side counters of the closed allocations (coturn logs them on close: ``rp``/
        ``rb`` packets/bytes received from peers, ``sp``/``sb`` sent to them), polled until one
        relayed both ways or ``deadline`` seconds; an allocation deleted by its client is closed
        at coturn's next timer tick."""
        end = time.monotonic() + deadline
        while True:
            text = self.log.read_text(errors="replace") if self.log.exists() else ""
            usage = [
                {key: int(value) for key, value in _USAGE_FIELD.findall(line)}
                for line in text.splitlines()
                if ": peer usage: " in line
            ]
            if any(u.get("rp", 0) > 0 and u.get("sp", 0) > 0 for u in usage):
                return usage
            if time.monotonic() >= end or self.proc.poll() is not None:
                return usage
            time.sleep(0.2)

    def wait_ready(self, deadline: float) -> None:
        """Bounded: STUN binding requests (each with its own timeout) until one is answered."""
        end = time.monotonic() + deadline
        last = ""
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                break
            try:
                self.topo.stun(self.topo.public_ns, self.servers[:1])
                return
            except TopologyError as exc:
                last = str(exc)[-300:]
        tail = self.log.read_text(errors="replace")[-1500:] if self.log.exists() else ""
        raise TopologyError(f"coturn did not answer STUN within {deadline:g} s: {last}\n{tail}")


#: Peer addresses coturn must not relay to (``denied-peer-ip``): the private and special-purpose
#: IPv4 ranges, as in docs/deploy.md. Security first (a relay into the TURN host's own networks),
#: and coturn 4.6 closes a whole allocation once a send from its relay socket has failed (here:
#: "network unreachable" for a home's private host candidate, which ICE checks relay→host) and
#: the next packet arrives on that socket, so a WebRTC link between two symmetric NATs lost its
#: relay before the relay→relay check. Denied, the ChannelBind is refused (403) and nothing is
#: sent. 198.18.0.0/15 is the Internet of these tests, hence allowed (a real server denies it).
DENIED_PEER_RANGES = (
    "0.0.0.0-0.255.255.255",
    "10.0.0.0-10.255.255.255",
    "100.64.0.0-100.127.255.255",
    "127.0.0.0-127.255.255.255",
    "169.254.0.0-169.254.255.255",
    "172.16.0.0-172.31.255.255",
    "192.0.0.0-192.0.0.255",
    "192.168.0.0-192.168.255.255",
    "240.0.0.0-255.255.255.255",
)


def coturn_config(ip: str, ip2: str, workdir: Path) -> str:
    """A coturn config: STUN and TURN on ``ip`` and ``ip2`` port 3478, no TLS, one static
    long-term-credential user, no relaying to private ranges (:data:`DENIED_PEER_RANGES`),
    logs and state in ``workdir``."""
    denied = "".join(f"denied-peer-ip={r}\n" for r in DENIED_PEER_RANGES)
    return f"""\
listening-ip={ip}
listening-ip={ip2}
listening-port={STUN_PORT}
relay-ip={ip}
min-port=49152
max-port=49999
realm={TURN_REALM}
lt-cred-mech
user={TURN_USER}:{TURN_PASSWORD}
fingerprint
no-tls
no-dtls
no-cli
no-rfc5780
no-multicast-peers
{denied}allowed-peer-ip=198.18.0.0-198.19.255.255
userdb={workdir / "turndb"}
pidfile={workdir / "turnserver.pid"}
log-file={workdir / "turnserver.log"}
simple-log
verbose
"""


# --- STUN (RFC 5389 binding request, the whole client) -------------------------------------


def stun_binding(
    sock: socket.socket, server: tuple[str, int], timeout: float = 2.0
) -> list[object]:
    """Send one Binding Request from ``sock``; the XOR-MAPPED-ADDRESS as ``[ip, port]``.

    Retransmits 3 times (``timeout`` each) as a UDP client must; raises ``TimeoutError``.
    """
    return _mapped(_transact(sock, server, 0x0001, b"", timeout))


def _mapped(data: bytes) -> list[object]:
    kind, length, magic = struct.unpack("!HHI", data[:8])
    if kind != 0x0101 or magic != _MAGIC:
        raise ValueError(f"not a Binding success response: type {kind:#06x}")
    pos, end = 20, 20 + length
    while pos + 4 <= end:
        attr, size = struct.unpack("!HH", data[pos : pos + 4])
        value = data[pos + 4 : pos + 4 + size]
        if attr in (0x0020, 0x0001) and value[1] == 0x01:  # (XOR-)MAPPED-ADDRESS, IPv4
            port = struct.unpack("!H", value[2:4])[0]
            raw = struct.unpack("!I", value[4:8])[0]
            if attr == 0x0020:
                port ^= _MAGIC >> 16
                raw ^= _MAGIC
            return [str(ipaddress.IPv4Address(raw)), port]
        pos += 4 + size + (-size % 4)
    raise ValueError("Binding response without a mapped address")


class TurnClient:
    """A TURN client over one UDP socket (RFC 5766, long-term credentials): allocate a relay,
    permit a peer address, send to a peer through the relay, receive what the relay got."""

    def __init__(
        self, server: tuple[str, int], user: str, password: str, timeout: float = 2.0
    ) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.server, self.user, self.password, self.timeout = server, user, password, timeout
        self.realm = self.nonce = self.key = b""

    def _authed(self, kind: int, body: bytes) -> bytes:
        """A request with credentials: first unauthenticated, then answering the 401."""
        if not self.key:
            answer = _transact(self.sock, self.server, kind, body, self.timeout)
            attrs = _attrs(answer)
            self.realm, self.nonce = attrs.get(0x0014, b""), attrs.get(0x0015, b"")
            if not self.realm or not self.nonce:
                raise ValueError("TURN server did not challenge with a realm and nonce")
            secret = f"{self.user}:{self.realm.decode()}:{self.password}"
            self.key = hashlib.md5(secret.encode()).digest()
        cred = _attr(0x0006, self.user.encode()) + _attr(0x0014, self.realm)
        cred += _attr(0x0015, self.nonce)
        return _transact(self.sock, self.server, kind, body + cred, self.timeout, key=self.key)

    def allocate(self) -> list[object]:
        """The relayed address (XOR-RELAYED-ADDRESS) of a new UDP allocation."""
        answer = self._authed(0x0003, _attr(0x0019, bytes([17, 0, 0, 0])))  # transport UDP
        if struct.unpack("!H", answer[:2])[0] != 0x0103:
            raise ValueError(f"Allocate refused: {_error(answer)}")
        return _xor_address(_attrs(answer)[0x0016])

    def permit(self, peer_ip: str) -> None:
        """CreatePermission: the relay accepts data from ``peer_ip`` (any port)."""
        answer = self._authed(0x0008, _attr(0x0012, _xor_pack(peer_ip, 0)))
        if struct.unpack("!H", answer[:2])[0] != 0x0108:
            raise ValueError(f"CreatePermission refused: {_error(answer)}")

    def send(self, peer: tuple[str, int], data: bytes) -> None:
        """A Send indication: the relay sends ``data`` to ``peer`` from the relayed address."""
        body = _attr(0x0012, _xor_pack(*peer)) + _attr(0x0013, data)
        head = struct.pack("!HHI", 0x0016, len(body), _MAGIC) + secrets.token_bytes(12)
        self.sock.sendto(head + body, self.server)

    def channel_bind(self, channel: int, peer: tuple[str, int]) -> None:
        """ChannelBind (what aioice uses to send): ``channel`` (0x4000…) now means ``peer``."""
        body = _attr(0x000C, struct.pack("!HH", channel, 0)) + _attr(0x0012, _xor_pack(*peer))
        answer = self._authed(0x0009, body)
        if struct.unpack("!H", answer[:2])[0] != 0x0109:
            raise ValueError(f"ChannelBind refused: {_error(answer)}")

    def send_channel(self, channel: int, data: bytes) -> None:
        """ChannelData on a bound channel (padded to 4 bytes, as over TCP; UDP allows it)."""
        frame = struct.pack("!HH", channel, len(data)) + data
        self.sock.sendto(frame + b"\0" * (-len(frame) % 4), self.server)

    def receive(self) -> tuple[list[object], bytes]:
        """The next Data indication: (the peer it came from, its data)."""
        self.sock.settimeout(self.timeout)
        while True:
            data, _ = self.sock.recvfrom(4096)
            if len(data) >= 20 and struct.unpack("!H", data[:2])[0] == 0x0017:
                attrs = _attrs(data)
                return _xor_address(attrs[0x0012]), attrs.get(0x0013, b"")


def turn_allocate(
    sock: socket.socket, server: tuple[str, int], user: str, password: str, timeout: float = 2.0
) -> list[object]:
    """A TURN Allocate (RFC 5766, UDP relay) with long-term credentials; the relayed address.

    The first request is answered 401 with the realm and nonce; the second carries USERNAME,
    REALM, NONCE and MESSAGE-INTEGRITY (HMAC-SHA1 keyed by MD5(user:realm:password)).
    """
    client = TurnClient(server, user, password, timeout)
    client.sock.close()
    client.sock = sock
    return client.allocate()


def turn_relay_check(server: tuple[str, int], user: str, password: str) -> dict[str, object]:
    """Two allocations from this host send to each other through the relay: Send indications
    both ways, then ChannelBind + ChannelData (the path aioice takes)."""
    a, b = TurnClient(server, user, password), TurnClient(server, user, password)
    ra, rb = a.allocate(), b.allocate()
    a.permit(str(rb[0]))
    b.permit(str(ra[0]))
    a.send((str(rb[0]), int(str(rb[1]))), b"a to b")
    got_b = b.receive()
    b.send((str(ra[0]), int(str(ra[1]))), b"b to a")
    got_a = a.receive()
    a.channel_bind(0x4000, (str(rb[0]), int(str(rb[1]))))
    a.send_channel(0x4000, b"a to b on a channel")
    got_channel = b.receive()
    return {
        "relays": [ra, rb],
        "b_got": [got_b[0], got_b[1].decode()],
        "a_got": [got_a[0], got_a[1].decode()],
        "b_got_channel": [got_channel[0], got_channel[1].decode()],
    }


def _xor_pack(ip: str, port: int) -> bytes:
    raw = int(ipaddress.IPv4Address(ip)) ^ _MAGIC
    return struct.pack("!BBHI", 0, 1, port ^ (_MAGIC >> 16), raw)


def _xor_address(value: bytes) -> list[object]:
    port = struct.unpack("!H", value[2:4])[0] ^ (_MAGIC >> 16)
    raw = struct.unpack("!I", value[4:8])[0] ^ _MAGIC
    return [str(ipaddress.IPv4Address(raw)), port]


def _error(answer: bytes) -> str:
    """An error response's ERROR-CODE as ``"403 Forbidden"`` (RFC 5389 §15.6)."""
    value = _attrs(answer).get(0x0009, b"")
    if len(value) < 4:
        return f"no ERROR-CODE (message type {struct.unpack('!H', answer[:2])[0]:#06x})"
    reason = value[4:].rstrip(b"\0").decode(errors="replace")
    return f"{(value[2] & 0x07) * 100 + value[3]} {reason}"


def _attr(kind: int, value: bytes) -> bytes:
    return struct.pack("!HH", kind, len(value)) + value + b"\0" * (-len(value) % 4)


def _attrs(data: bytes) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    pos, end = 20, 20 + struct.unpack("!H", data[2:4])[0]
    while pos + 4 <= end:
        kind, size = struct.unpack("!HH", data[pos : pos + 4])
        out.setdefault(kind, data[pos + 4 : pos + 4 + size])
        pos += 4 + size + (-size % 4)
    return out


def _transact(
    sock: socket.socket,
    server: tuple[str, int],
    kind: int,
    body: bytes,
    timeout: float,
    key: bytes | None = None,
) -> bytes:
    txid = secrets.token_bytes(12)
    if key is not None:  # MESSAGE-INTEGRITY over the message with its length counted in
        head = struct.pack("!HHI", kind, len(body) + 24, _MAGIC) + txid
        body += _attr(0x0008, hmac.new(key, head + body, hashlib.sha1).digest())
    request = struct.pack("!HHI", kind, len(body), _MAGIC) + txid + body
    sock.settimeout(timeout)
    for _ in range(3):
        sock.sendto(request, server)
        try:
            while True:
                data, _ = sock.recvfrom(4096)
                if len(data) >= 20 and data[8:20] == txid:
                    return data
        except TimeoutError:
            continue
    raise TimeoutError(f"no STUN answer from {server[0]}:{server[1]}")


def main(argv: Sequence[str]) -> int:
    """``python tests/netns.py up [--coturn DIR]``: build the topology, print its namespaces
    and addresses (JSON), keep it until SIGINT or SIGTERM, then remove it (docs/deploy.md)."""
    if len(argv) < 1 or argv[0] != "up":
        print("usage: python tests/netns.py up [--coturn DIR]", file=sys.stderr)
        return 2
    why = why_unavailable()
    if why:
        print(f"netns: {why}", file=sys.stderr)
        return 1
    stop = False

    def _stop(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    with topology() as topo:
        info: dict[str, object] = {
            "public": {"ns": topo.public_ns, "ip": topo.public_ip, "ip2": topo.public_ip2},
            "nats": {
                nat.name: {
                    "kind": nat.kind,
                    "ns": nat.ns,
                    "wan": nat.wan_ip,
                    "lan": nat.lan_net,
                    "homes": {h.name: {"ns": h.ns, "ip": h.ip} for h in nat.homes},
                }
                for nat in topo.nats.values()
            },
        }
        if "--coturn" in argv:
            workdir = Path(argv[argv.index("--coturn") + 1])
            workdir.mkdir(parents=True, exist_ok=True)
            turn = topo.start_coturn(workdir)
            info["coturn"] = {"stun": turn.stun_url(), "turn": turn.turn_url()}
        print(json.dumps(info, indent=2), flush=True)
        while not stop:
            signal.pause()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
