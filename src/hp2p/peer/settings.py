"""Peer settings (PC FE, Q.4100 §7.2.1.1): one object with sections, one pipeline, one error.

:class:`Settings` holds every parameter of ``hp2p peer``, in four sections:

=========== ========================================= ===========================================
section     class                                     applies to
=========== ========================================= ===========================================
``node``    :class:`NodeSettings`                     every peer's shell: HOMS, create/join,
                                                      listen, local API, peer-id, HOMP, faults …
``tree``    :class:`hp2p.peer.config.PeerConfig`      the CoreTree/SubTree core
``mesh``    :class:`hp2p.peer.mesh_config.MeshConfig` the SubMesh core
``submesh`` :class:`SubMeshSettings`                  the SubMesh shell (parent, store, standby,
                                                      manifest keys)
=========== ========================================= ===========================================

They are set the same way, in increasing precedence: defaults, a TOML file, environment
variables ``HP2P_<KEY>`` (``HP2P_MAX_CHILDREN=8``) and command-line flags (``--set KEY=VALUE``
for any key, :func:`parse_assignments`, and the named options of ``hp2p peer``). One flat
namespace names every key; a key two sections share (``heartbeat_interval``,
``heartbeat_timeout``) sets both. ``SECTION.KEY`` (``--set mesh.heartbeat_timeout=6``, or a TOML
table ``[tree]`` (alias ``[core]``), ``[mesh]``, ``[submesh]``) sets one section only and is
*conditional*: it applies when that section does. A TOML ``[node]`` table is the same as flat
keys. Values from the environment and ``--set`` are strings, converted to the key's type.

Which sections apply depends on the overlay, known once the HOMS has said what it is
(:func:`runtime_of` on the typed HOMP query answer): ``node`` + ``tree`` for a CoreTree or
SubTree, ``node`` + ``mesh`` + ``submesh`` for a SubMesh. :meth:`Settings.check` then refuses
every flat key the user gave that does not apply, with a message that says why and what to do:
nothing given is ever silently ignored. An unknown key is an error that names it and its close
matches. Every error of this module (and of the section classes) is :class:`SettingsError`.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from hp2p.peer.config import PeerConfig
from hp2p.peer.errors import SettingsError
from hp2p.peer.mesh_config import MeshConfig
from hp2p.transport.limits import (
    DEFAULT_BUFFERED_BYTES,
    DEFAULT_FRAME_DEADLINE,
    DEFAULT_MAX_UNIDENTIFIED,
    R2Limits,
)

if TYPE_CHECKING:
    from hp2p.wire import homp

__all__ = [
    "ENV_PREFIX",
    "NodeSettings",
    "Runtime",
    "Settings",
    "SettingsError",
    "SubMeshSettings",
    "is_loopback_host",
    "merge",
    "overlay_kind",
    "parse_assignments",
    "runtime_of",
    "settings_table",
    "split_host_port",
]

ENV_PREFIX = "HP2P_"

#: The two peer runtimes: the tree (CoreTree, SubTree) and the SubMesh.
Runtime = Literal["tree", "mesh"]


def _doc(text: str, **extra: str) -> dict[str, str]:
    return {"doc": text, **extra}


def check_homs_url(url: str) -> None:
    """Refuse a HOMS address a peer could never reach, saying how it should look."""
    from urllib.parse import urlsplit

    example = "e.g. --homs http://127.0.0.1:8081 (or HP2P_HOMS=http://…)"
    if not url:
        raise SettingsError(f"the HOMS URL (homs) is empty; {example}")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise SettingsError(f"the HOMS URL {url!r} is malformed ({exc}); {example}") from None
    if parts.scheme not in ("http", "https"):
        hint = f" — did you mean http://{url}?" if "://" not in url else ""
        raise SettingsError(
            f"the HOMS URL {url!r} must start with http:// or https://{hint}; {example}"
        )
    if not parts.hostname:
        raise SettingsError(f"the HOMS URL {url!r} names no host; {example}")
    del port


def check_peer_id(peer_id: str | None) -> None:
    """Refuse a peer-id the HOMS would refuse, with the HOMS's own rule and words."""
    if peer_id is not None:
        from hp2p.wire.homp import peer_id_problem

        problem = peer_id_problem(peer_id)
        if problem is not None:
            raise SettingsError(f"peer_id (--id): {problem}")


@dataclass(frozen=True, slots=True)
class NodeSettings:
    """The ``node`` section: the shell of every peer (tree or SubMesh)."""

    homs: str = field(
        default="http://127.0.0.1:8081", metadata=_doc("HOMS URL (R1, HOMP over HTTP).")
    )
    create: str | None = field(
        default=None,
        metadata=_doc(
            "Create an overlay with this title, then join it: a CoreTree, or with parent a "
            "SubMesh whose source is this peer."
        ),
    )
    join: str | None = field(
        default=None,
        metadata=_doc(
            "Join the overlay with this overlay-id or title (CoreTree, SubTree, SubMesh)."
        ),
    )
    listen: str = field(
        default="127.0.0.1:0",
        metadata=_doc("HOST:PORT for R2 (TCP); port 0 picks a free one. Sent as tcp://HOST:PORT."),
    )
    advertise: str | None = field(
        default=None,
        metadata=_doc(
            "tcp://HOST:PORT (tls://HOST:PORT with tls) other peers reach this one at (a NAT's "
            "forwarded port, a public name); default: the listening address, this host's "
            "address for 0.0.0.0."
        ),
    )
    tls: bool = field(
        default=False,
        metadata=_doc(
            "Listen for R2 with TLS 1.3 (address tls://HOST:PORT): the certificate is made "
            "from the membership key, so no CA is needed; links are confidential."
        ),
    )
    webrtc: bool = field(
        default=False,
        metadata=_doc(
            "Also reach and accept peers over WebRTC data channels, dialled by peer-id through "
            "the HOMS signalling WebSocket (needs the webrtc extra: aiortc). Advertises the "
            "signalling URL ws://HOMS/ws unless advertise names a tcp:// or tls:// address."
        ),
    )
    ice_servers: str = field(
        default="",
        metadata=_doc(
            "Comma-separated ICE servers for webrtc: stun:HOST:PORT, "
            "turn:USER:CREDENTIAL@HOST:PORT; none: host candidates only."
        ),
    )
    ice_hosts: str = field(
        default="",
        metadata=_doc(
            "Comma-separated local addresses WebRTC host candidates are gathered on "
            "(e.g. 127.0.0.1); default: every non-loopback interface (process-wide)."
        ),
    )
    api: str | None = field(
        default=None,
        metadata=_doc(
            "HOST:PORT of the local HTTP + WebSocket API (bearer token required); off unless "
            "given. A non-loopback HOST needs api_public."
        ),
    )
    api_public: bool = field(
        default=False,
        metadata=_doc(
            "Allow the local API on a non-loopback address (reachable from other machines; "
            "only the token protects it)."
        ),
    )
    peer_id: str | None = field(
        default=None,
        metadata=_doc(
            "Peer-id: 1 to 256 characters of UTF-8 text, no control characters (default: "
            "peer-<8 random hex digits>)."
        ),
    )
    description: str = field(
        default="", metadata=_doc("Overlay description for --create.", only="create")
    )
    access_key: str | None = field(
        default=None,
        metadata=_doc("Access key: makes a created overlay closed; needed to join a closed one."),
    )
    admin_key: str | None = field(
        default=None,
        metadata=_doc(
            "Admin key of a created overlay (default: random, printed once and stored 0600 "
            "for `hp2p overlay`).",
            only="create",
        ),
    )
    new: bool = field(
        default=False,
        metadata=_doc(
            "With create: make the overlay even if one with this title exists (a duplicate).",
            only="create",
        ),
    )
    expires: int = field(
        default=30, metadata=_doc("HOMP expires (s); the peer refreshes every 0.8 × expires.")
    )
    homs_timeout: float = field(default=5.0, metadata=_doc("Timeout of one HOMP request (s)."))
    homs_attempts: int = field(
        default=4, metadata=_doc("HOMP attempts per operation (exponential back-off, jitter).")
    )
    join_timeout: float = field(
        default=30.0,
        metadata=_doc(
            "Give up when the peer is not attached (tree) or joined (SubMesh) after this (s)."
        ),
    )
    leave_timeout: float = field(
        default=5.0, metadata=_doc("Bound on a clean leave: RELEASE, flush, HOMP leave (s).")
    )
    subscriber_queue: int = field(
        default=1024,
        metadata=_doc("Messages buffered per subscriber; a slow one loses the oldest."),
    )
    send_queue_bytes: int = field(
        default=4 * 1024 * 1024,
        metadata=_doc(
            "Bytes queued per link before frames are refused (back-pressure); a SubMesh peer "
            "that sets nothing takes 16 MiB (pieces are large)."
        ),
    )
    faults: str = field(
        default="",
        metadata=_doc("Fault injection on every link, e.g. delay=0.02,jitter=0.005,loss=0.01."),
    )
    fault_seed: int = field(default=0, metadata=_doc("Seed of the fault injection."))
    seed: int | None = field(
        default=None, metadata=_doc("Seed of the core's random choices (default: random).")
    )
    r2_buffered_bytes: int = field(
        default=DEFAULT_BUFFERED_BYTES,
        metadata=_doc(
            "Bytes of incomplete R2 frames held over all connections of the peer; past it the "
            "connection holding the most is closed."
        ),
    )
    r2_frame_deadline: float = field(
        default=DEFAULT_FRAME_DEADLINE,
        metadata=_doc(
            "Seconds an R2 frame (and an accepted connection's first frame) has to complete "
            "before the connection is closed."
        ),
    )
    r2_max_unidentified: int = field(
        default=DEFAULT_MAX_UNIDENTIFIED,
        metadata=_doc(
            "Accepted R2 connections that may wait for their first complete frame at once; "
            "more are refused."
        ),
    )
    security: str = field(
        default="credentials",
        metadata=_doc(
            "Security of a created overlay: credentials (members need a HOMS-signed "
            "credential) or reference-compat (insecure: keyless reference peers admitted).",
            only="create",
        ),
    )
    key_file: str | None = field(
        default=None,
        metadata=_doc(
            "Ed25519 key file (0600) the membership credential binds; made if missing "
            "(default: a fresh key per run)."
        ),
    )

    def __post_init__(self) -> None:
        check_homs_url(self.homs)
        check_peer_id(self.peer_id)
        if self.security not in ("credentials", "reference-compat"):
            raise SettingsError(
                f"security must be credentials or reference-compat, not {self.security!r}"
            )
        if self.create is not None and self.join is not None:
            raise SettingsError(
                "give either create (--create TITLE) or join (--join ID-OR-TITLE), not both"
            )
        positive = ("expires", "homs_timeout", "homs_attempts", "join_timeout", "leave_timeout")
        r2 = ("r2_buffered_bytes", "r2_frame_deadline", "r2_max_unidentified")
        for name in (*positive, "subscriber_queue", "send_queue_bytes", *r2):
            if getattr(self, name) <= 0:
                raise SettingsError(f"{name} must be greater than 0, got {getattr(self, name)}")
        for name in ("listen", "api"):
            value = getattr(self, name)
            if value is not None:
                split_host_port(value, name)
        if self.api is not None and not self.api_public:
            api_host = split_host_port(self.api, "api")[0]
            if not is_loopback_host(api_host):
                raise SettingsError(
                    f"api {self.api!r} is not a loopback address: the local API would be "
                    "reachable from other machines. Use 127.0.0.1:PORT, or give --api-public "
                    "(setting api_public) if you mean it"
                )
        if self.ice_servers and not self.webrtc:
            raise SettingsError("ice_servers (--ice-server) is for webrtc: give --webrtc too")
        if self.webrtc:
            from hp2p.transport.ice import parse_ice_servers

            try:
                parse_ice_servers(self.ice_servers)
            except ValueError as exc:
                raise SettingsError(f"ice_servers: {exc}") from None
        if self.advertise is not None and self.webrtc and self.advertise.startswith("ws"):
            host, _, rest = self.advertise.partition("://")
            if host not in ("ws", "wss") or not rest:
                raise SettingsError(
                    f"advertise must be ws://HOST:PORT/PATH, got {self.advertise!r}"
                )
        elif self.advertise is not None:
            host, _, rest = self.advertise.partition("://")
            scheme = "tls" if self.tls else "tcp"
            if host != scheme or not rest:
                raise SettingsError(
                    f"advertise must be {scheme}://HOST:PORT, got {self.advertise!r} "
                    "(the address other peers dial to reach this one)"
                )
            split_host_port(rest, "advertise")
            if rest.rsplit(":", 1)[0].strip("[]") in ANY_HOSTS:
                raise SettingsError(
                    f"advertise {self.advertise!r} names no host: give the address other "
                    "peers can reach, not 0.0.0.0"
                )

    def r2_limits(self) -> R2Limits:
        """The process-wide R2 limits these settings give (:mod:`hp2p.transport.limits`)."""
        return R2Limits(self.r2_buffered_bytes, self.r2_frame_deadline, self.r2_max_unidentified)

    @classmethod
    def describe(cls) -> dict[str, tuple[Any, str]]:
        return {f.name: (f.default, f.metadata.get("doc", "")) for f in dataclasses.fields(cls)}


@dataclass(frozen=True, slots=True)
class SubMeshSettings:
    """The ``submesh`` section: what only a SubMesh peer's shell takes."""

    parent: str | None = field(
        default=None,
        metadata=_doc(
            "With create: the parent CoreTree's overlay-id; the new overlay is a SubMesh "
            "(sub/mesh) and this peer its source.",
            only="create",
        ),
    )
    parent_admin_key: str | None = field(
        default=None,
        metadata=_doc(
            "With create and parent: the parent CoreTree's admin key, its owner's consent "
            "that the HOMS requires for a sub-overlay under it.",
            only="create",
        ),
    )
    store: str | None = field(
        default=None, metadata=_doc("Directory of a persistent piece store (default: memory).")
    )
    standby: bool = field(
        default=False,
        metadata=_doc("Standby for the source: publish in its place when it is gone."),
    )
    signing_key: str | None = field(
        default=None,
        metadata=_doc(
            "Source (or standby): Ed25519 key file that signs manifests, created 0600 if "
            "absent (default $HP2P_KEY_DIR or $XDG_STATE_HOME/hp2p/submesh-keys/<source-id>"
            ".ed25519.pem)."
        ),
    )
    unsigned: bool = field(
        default=False, metadata=_doc("Source: publish unsigned manifests (for old peers).")
    )
    source_key: str | None = field(
        default=None,
        metadata=_doc(
            "Pin the source's public key (ed25519:HEX) instead of trusting the HOMS's record."
        ),
    )

    @classmethod
    def describe(cls) -> dict[str, tuple[Any, str]]:
        return {f.name: (f.default, f.metadata.get("doc", "")) for f in dataclasses.fields(cls)}


ANY_HOSTS = ("0.0.0.0", "::", "")


def is_loopback_host(host: str) -> bool:
    """``localhost`` or a loopback address (127.0.0.0/8, ::1): reachable from this host only."""
    import ipaddress  # small, but only needed when an API address is given

    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # another name: it may resolve to anything


def split_host_port(value: str, name: str = "address") -> tuple[str, int]:
    """``HOST:PORT`` (IPv6 as ``[::1]:PORT``) into its parts, with a clear error."""
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise SettingsError(f"{name}: expected HOST:PORT such as 127.0.0.1:7000, got {value!r}")
    return host, int(port)


# --- the sections and their keys ---------------------------------------------------------------

_SECTIONS: dict[str, Any] = {
    "node": NodeSettings,
    "tree": PeerConfig,
    "mesh": MeshConfig,
    "submesh": SubMeshSettings,
}
#: TOML table and ``--set SECTION.KEY`` names of the sections (``core``: the older name).
_SECTION_NAMES = {
    "node": "node",
    "tree": "tree",
    "core": "tree",
    "mesh": "mesh",
    "submesh": "submesh",
}
_APPLIES: dict[Runtime, tuple[str, ...]] = {
    "tree": ("node", "tree"),
    "mesh": ("node", "mesh", "submesh"),
}
_LABEL = {
    "node": "shell",
    "tree": "tree (CoreTree/SubTree)",
    "mesh": "SubMesh",
    "submesh": "SubMesh",
}


def _fields(section: str) -> dict[str, dataclasses.Field[Any]]:
    return {
        f.name: f for f in dataclasses.fields(_SECTIONS[section]) if not f.metadata.get("internal")
    }


_FIELDS = {section: _fields(section) for section in _SECTIONS}
#: key -> the sections that have it (two for the shared heartbeat keys)
_KEYS: dict[str, tuple[str, ...]] = {}
for _section, _names in _FIELDS.items():
    for _name in _names:
        _KEYS[_name] = (*_KEYS.get(_name, ()), _section)
assert all(set(sections) <= {"tree", "mesh"} for sections in _KEYS.values() if len(sections) > 1), (
    "only the two cores may share a key (it then means the same thing in both)"
)


def _targets(name: str) -> tuple[tuple[str, str], ...]:
    """The (section, key) pairs that ``name`` (``KEY`` or ``SECTION.KEY``) sets."""
    scope, _, key = name.rpartition(".")
    if scope:
        section = _SECTION_NAMES.get(scope)
        if section is None:
            raise SettingsError(
                f"unknown section {scope!r} in {name!r}; sections are node, tree (or core), "
                "mesh and submesh"
            )
        if key not in _FIELDS[section]:
            where = _KEYS.get(key)
            hint = f" (it is in {', '.join(where)})" if where else _close(key)
            raise SettingsError(f"{key!r} is not a {section} setting{hint}")
        return ((section, key),)
    sections = _KEYS.get(key)
    if sections is None:
        raise SettingsError(
            f"unknown setting {key!r}{_close(key)}; `hp2p peer --help` lists every setting"
        )
    return tuple((section, key) for section in sections)


def _close(key: str) -> str:
    import difflib  # only for a mistyped key

    matches = difflib.get_close_matches(key, list(_KEYS), n=3, cutoff=0.6)
    return f" (did you mean {' or '.join(matches)}?)" if matches else ""


_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


def _convert(name: str, declared: Any, raw: Any) -> Any:
    """Bring a TOML value or a string (environment, ``--set``) to the setting's type."""
    kind = str(declared).replace(" ", "")
    optional = "|None" in kind
    base = kind.split("|")[0]
    if raw is None:
        if optional:
            return None
        raise SettingsError(f"{name}: a value is required")
    if isinstance(raw, str) and base != "str":
        text = raw.strip()
        if optional and text.lower() in ("", "none"):
            return None
        if base == "bool":
            if text.lower() in _TRUE:
                return True
            if text.lower() in _FALSE:
                return False
            raise SettingsError(f"{name}: expected true or false, got {raw!r}")
        try:
            raw = int(text) if base == "int" else float(text)
        except ValueError:
            expected = "an integer" if base == "int" else "a number"
            raise SettingsError(f"{name}: expected {expected}, got {raw!r}") from None
    if base == "bool" and not isinstance(raw, bool):
        raise SettingsError(f"{name}: expected true or false, got {raw!r}")
    if base == "int" and (isinstance(raw, bool) or not isinstance(raw, int)):
        raise SettingsError(f"{name}: expected an integer, got {raw!r}")
    if base == "float":
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            raise SettingsError(f"{name}: expected a number, got {raw!r}")
        return float(raw)
    if base == "str" and not isinstance(raw, str):
        raise SettingsError(f"{name}: expected a string, got {raw!r}")
    return raw


# --- the settings object -----------------------------------------------------------------------


def overlay_kind(overlay: homp.QueryOverlay) -> str:
    """``CoreTree``, ``SubTree`` or ``SubMesh``, from the typed HOMP query answer."""
    if overlay.type == "core":
        return "CoreTree"
    return "SubMesh" if overlay.sub_type == "mesh" else "SubTree"


def runtime_of(overlay: homp.QueryOverlay) -> Runtime:
    """Which peer runtime joins ``overlay``: the SubMesh one for sub/mesh, else the tree one."""
    return "mesh" if overlay_kind(overlay) == "SubMesh" else "tree"


@dataclass(frozen=True, slots=True)
class Settings:
    """Every setting of one peer, by section, and which keys the user gave (see the module)."""

    node: NodeSettings = field(default_factory=NodeSettings)
    tree: PeerConfig = field(default_factory=PeerConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)
    submesh: SubMeshSettings = field(default_factory=SubMeshSettings)
    #: Keys as the user gave them (``max_children``, ``mesh.heartbeat_timeout``), from the
    #: TOML file, the environment and the flags; what :meth:`check` looks at.
    given: frozenset[str] = frozenset()

    def created_runtime(self) -> Runtime:
        """The runtime of a ``create``: a SubMesh with ``parent``, else a CoreTree."""
        return "mesh" if self.submesh.parent else "tree"

    def check(self, runtime: Runtime, overlay: str) -> None:
        """Refuse every given key that does not apply to ``runtime``.

        ``overlay`` says what the overlay is, for the message ("overlay 'blocks' is a
        SubMesh"). Keys given as ``SECTION.KEY`` (or in a TOML section table) are conditional
        and never refused: they apply when their section does.
        """
        creating = self.node.create is not None
        problems: list[str] = []
        for name in sorted(self.given):
            if "." in name:
                continue
            sections = _KEYS[name]
            applying = [s for s in sections if s in _APPLIES[runtime]]
            only = _FIELDS[sections[0]][name].metadata.get("only")
            if only == "create" and not creating:
                problems.append(f"{name} applies to --create only, not to --join: drop it")
            elif not applying:
                label = _LABEL[sections[0]]
                problems.append(
                    f"{name} is a {label} setting and {overlay}: drop it, or give it as "
                    f"{sections[0]}.{name} (TOML table [{sections[0]}]) to apply it to "
                    f"{label} peers only"
                )
            elif only == "tree" and runtime != "tree":
                problems.append(f"{name} applies to tree peers only and {overlay}: drop it")
        if problems:
            raise SettingsError("; ".join(problems))

    # --- the lean runtime's copy (hp2p.peer.daemon) ------------------------------------------
    def to_document(self) -> dict[str, Any]:
        """Plain JSON-ready values; :meth:`from_document` rebuilds the same object."""
        tree = dataclasses.asdict(self.tree)
        tree["pinned"] = sorted(self.tree.pinned)
        return {
            "node": dataclasses.asdict(self.node),
            "tree": tree,
            "mesh": dataclasses.asdict(self.mesh),
            "submesh": dataclasses.asdict(self.submesh),
            "given": sorted(self.given),
        }

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> Settings:
        tree = dict(document["tree"])
        tree["pinned"] = frozenset(tree.get("pinned", ()))
        return cls(
            node=NodeSettings(**document["node"]),
            tree=PeerConfig(**tree),
            mesh=MeshConfig.from_dict(document["mesh"]),
            submesh=SubMeshSettings(**document["submesh"]),
            given=frozenset(document.get("given", ())),
        )


# --- the pipeline -------------------------------------------------------------------------------


def read_toml(path: Path) -> dict[str, Any]:
    """Keys of a TOML settings file: flat, ``[node]`` flattened, section tables as SECTION.KEY."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SettingsError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"config file {path} is not valid TOML: {exc}") from None
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if key == "node" and isinstance(value, dict):
            flat.update(value)
        elif key in _SECTION_NAMES and isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        elif isinstance(value, dict):
            raise SettingsError(
                f"config file {path}: unknown table [{key}]; tables are [node], [tree] (or "
                "[core]), [mesh] and [submesh]"
            )
        else:
            flat[key] = value
    return flat


def from_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """``HP2P_<KEY>`` variables that name a setting (others, e.g. HP2P_KEY_DIR, are left alone)."""
    found: dict[str, str] = {}
    for name, value in environ.items():
        if name.startswith(ENV_PREFIX):
            key = name[len(ENV_PREFIX) :].lower()
            if key in _KEYS:
                found[key] = value
    return found


def parse_assignments(items: list[str]) -> dict[str, str]:
    """``--set KEY=VALUE`` items (``KEY`` may be ``SECTION.KEY``); the one ``--set`` parser."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SettingsError(f"--set expects KEY=VALUE, got {item!r} (e.g. max_children=8)")
        out[key.strip().replace("-", "_")] = value
    return out


def merge(
    *,
    file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
) -> Settings:
    """Defaults < TOML file < environment < flags (``None`` flags are "not given")."""
    layers: list[Mapping[str, Any]] = []
    if file is not None:
        layers.append(read_toml(file))
    layers.append(from_environment(os.environ if environ is None else environ))
    layers.append({k: v for k, v in (flags or {}).items() if v is not None})
    values: dict[str, dict[str, Any]] = {section: {} for section in _SECTIONS}
    given: set[str] = set()
    for layer in layers:
        for name, raw in layer.items():
            for section, key in _targets(name):
                values[section][key] = _convert(key, _FIELDS[section][key].type, raw)
            given.add(name)
    sections: dict[str, Any] = {}
    for section, cls in _SECTIONS.items():
        try:
            if hasattr(cls, "from_dict"):
                sections[section] = cls.from_dict(values[section])
            else:
                sections[section] = cls(**values[section])
        except SettingsError as exc:
            raise SettingsError(f"{exc} ({_LABEL[section]} settings)") from None
        except TypeError as exc:
            raise SettingsError(f"bad setting: {exc}") from None
    return Settings(**sections, given=frozenset(given))


def settings_table() -> list[tuple[str, str, str, str]]:
    """(section, key, default, doc) of every setting, for ``--help`` and docs/peer.md."""
    rows: list[tuple[str, str, str, str]] = []
    for section, cls in _SECTIONS.items():
        for key, (default, doc) in cls.describe().items():
            rows.append((section, key, repr(default), doc))
    return rows
