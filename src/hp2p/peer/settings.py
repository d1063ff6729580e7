"""Peer configuration, shell side (PC FE, Q.4100 §7.2.1.1): TOML file + environment + flags.

Two kinds of settings reach a running peer:

* :class:`NodeSettings`: what the asyncio shell needs (HOMS URL, listen address, local API,
  peer-id, HOMP ``expires``, retries, fault injection …);
* :class:`hp2p.peer.config.PeerConfig`: every knob of the sans-IO core.

Both are set the same way, in increasing precedence: defaults, a TOML file (flat keys, or the
tables ``[node]`` and ``[core]``), environment variables ``HP2P_<KEY>`` (``HP2P_MAX_CHILDREN=8``)
and command-line flags (``--set KEY=VALUE`` for any key). Keys of the two sets never collide, so
one flat namespace names every parameter; an unknown key is an error that names the key, never
silently ignored. Values from the environment and ``--set`` are strings and are converted to the
type of the setting.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hp2p.peer.config import ConfigError, PeerConfig

ENV_PREFIX = "HP2P_"


class SettingsError(ValueError):
    """A setting is unknown, badly typed or impossible; the message names it."""


def _doc(text: str) -> dict[str, str]:
    return {"doc": text}


@dataclass(frozen=True, slots=True)
class NodeSettings:
    """Settings of the peer shell (``hp2p peer``); the core's own are in ``PeerConfig``."""

    homs: str = field(
        default="http://127.0.0.1:8081", metadata=_doc("HOMS URL (R1, HOMP over HTTP).")
    )
    create: str | None = field(
        default=None, metadata=_doc("Create a CoreTree overlay with this title, then join it.")
    )
    join: str | None = field(
        default=None, metadata=_doc("Join the overlay with this overlay-id or title.")
    )
    listen: str = field(
        default="127.0.0.1:0",
        metadata=_doc("HOST:PORT for R2 (TCP); port 0 picks a free one. Sent as tcp://HOST:PORT."),
    )
    api: str | None = field(
        default=None,
        metadata=_doc("HOST:PORT of the local HTTP + WebSocket API; off unless given."),
    )
    peer_id: str | None = field(
        default=None, metadata=_doc("Peer-id (default: peer-<8 random hex digits>).")
    )
    description: str = field(default="", metadata=_doc("Overlay description for --create."))
    access_key: str | None = field(
        default=None,
        metadata=_doc("Access key: makes a created overlay closed; needed to join a closed one."),
    )
    admin_key: str | None = field(
        default=None, metadata=_doc("Admin key of a created overlay (default: random).")
    )
    expires: int = field(
        default=30, metadata=_doc("HOMP expires (s); the peer refreshes every 0.8 × expires.")
    )
    homs_timeout: float = field(default=5.0, metadata=_doc("Timeout of one HOMP request (s)."))
    homs_attempts: int = field(
        default=4, metadata=_doc("HOMP attempts per operation (exponential back-off, jitter).")
    )
    join_timeout: float = field(
        default=30.0, metadata=_doc("Give up when the peer is not attached after this (s).")
    )
    rejoins: int = field(
        default=3,
        metadata=_doc("Fresh HOMP joins (new ticket) after the core gave up re-attaching."),
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
        metadata=_doc("Bytes queued per link before frames are refused (back-pressure)."),
    )
    faults: str = field(
        default="",
        metadata=_doc("Fault injection on every link, e.g. delay=0.02,jitter=0.005,loss=0.01."),
    )
    fault_seed: int = field(default=0, metadata=_doc("Seed of the fault injection."))
    seed: int | None = field(
        default=None, metadata=_doc("Seed of the core's random choices (default: random).")
    )

    def __post_init__(self) -> None:
        if self.create is not None and self.join is not None:
            raise SettingsError(
                "give either create (--create TITLE) or join (--join ID-OR-TITLE), not both"
            )
        positive = ("expires", "homs_timeout", "homs_attempts", "join_timeout", "leave_timeout")
        for name in (*positive, "subscriber_queue", "send_queue_bytes"):
            if getattr(self, name) <= 0:
                raise SettingsError(f"{name} must be greater than 0, got {getattr(self, name)}")
        for name in ("listen", "api"):
            value = getattr(self, name)
            if value is not None:
                split_host_port(value, name)

    @classmethod
    def describe(cls) -> dict[str, tuple[Any, str]]:
        return {f.name: (f.default, f.metadata.get("doc", "")) for f in dataclasses.fields(cls)}


def split_host_port(value: str, name: str = "address") -> tuple[str, int]:
    """``HOST:PORT`` (IPv6 as ``[::1]:PORT``) into its parts, with a clear error."""
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise SettingsError(f"{name}: expected HOST:PORT such as 127.0.0.1:7000, got {value!r}")
    return host, int(port)


_NODE_FIELDS = {f.name: f for f in dataclasses.fields(NodeSettings)}
_CORE_FIELDS = {f.name: f for f in dataclasses.fields(PeerConfig)}
assert not set(_NODE_FIELDS) & set(_CORE_FIELDS), "node and core setting names must differ"


def _convert(name: str, declared: Any, raw: Any) -> Any:
    """Bring a TOML value or a string (environment, ``--set``) to the setting's type."""
    kind = str(declared)
    if raw is None:
        return None
    if isinstance(raw, str):
        text = raw.strip()
        if "None" in kind and text.lower() in ("", "none"):
            return None
        try:
            if kind.startswith("int"):
                return int(text)
            if kind.startswith("float"):
                return float(text)
        except ValueError:
            expected = "an integer" if kind.startswith("int") else "a number"
            raise SettingsError(f"{name}: expected {expected}, got {raw!r}") from None
        return raw
    if kind.startswith("float") and isinstance(raw, int) and not isinstance(raw, bool):
        return float(raw)
    if kind.startswith("str") and not isinstance(raw, str):
        raise SettingsError(f"{name}: expected a string, got {raw!r}")
    return raw


def read_toml(path: Path) -> dict[str, Any]:
    """Flat keys of a TOML settings file; ``[node]`` and ``[core]`` tables are flattened."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SettingsError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"config file {path} is not valid TOML: {exc}") from None
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if key in ("node", "core") and isinstance(value, dict):
            flat.update(value)
        else:
            flat[key] = value
    return flat


def from_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """``HP2P_<KEY>`` variables that name a setting (others, e.g. HP2P_TEST_*, are left alone)."""
    known = set(_NODE_FIELDS) | set(_CORE_FIELDS)
    found: dict[str, str] = {}
    for name, value in environ.items():
        if name.startswith(ENV_PREFIX):
            key = name[len(ENV_PREFIX) :].lower()
            if key in known:
                found[key] = value
    return found


def parse_assignments(items: list[str]) -> dict[str, str]:
    """``--set KEY=VALUE`` items."""
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
) -> tuple[NodeSettings, PeerConfig]:
    """Defaults < TOML file < environment < flags; returns both typed setting objects."""
    layers: list[Mapping[str, Any]] = []
    if file is not None:
        layers.append(read_toml(file))
    layers.append(from_environment(os.environ if environ is None else environ))
    layers.append({k: v for k, v in (flags or {}).items() if v is not None})
    node: dict[str, Any] = {}
    core: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            if key in _NODE_FIELDS:
                node[key] = _convert(key, _NODE_FIELDS[key].type, value)
            elif key in _CORE_FIELDS:
                core[key] = _convert(key, _CORE_FIELDS[key].type, value)
            else:
                raise SettingsError(
                    f"unknown setting {key!r}; `hp2p peer --help` lists every setting"
                )
    try:
        return NodeSettings(**node), PeerConfig.from_dict(core)
    except ConfigError as exc:
        raise SettingsError(str(exc)) from None
    except TypeError as exc:
        raise SettingsError(f"bad setting: {exc}") from None


def settings_table() -> list[tuple[str, str, str]]:
    """(key, default, doc) of every setting, shell first, for --help and docs/peer.md."""
    rows = [(k, repr(d), doc) for k, (d, doc) in NodeSettings.describe().items()]
    rows += [(k, repr(d), doc) for k, (d, doc) in PeerConfig.describe().items()]
    return rows


@dataclass(frozen=True, slots=True)
class SubMeshSigning:
    """``hp2p peer`` options that only a SubMesh peer takes (manifest signatures)."""

    source_key: str | None = None
    require_signatures: bool = False
    signing_key: str | None = None

    @property
    def given(self) -> bool:
        return bool(self.source_key or self.require_signatures or self.signing_key)

    def argv(self) -> list[str]:
        """The same options for ``python -m hp2p.peer.mesh_daemon``."""
        out: list[str] = []
        if self.source_key:
            out += ["--source-key", self.source_key]
        if self.require_signatures:
            out.append("--require-signatures")
        if self.signing_key:
            out += ["--signing-key", self.signing_key]
        return out
