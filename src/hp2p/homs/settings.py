"""HOMS settings: one typed object that the CLI fills and the app factory reads.

Keeping every knob here (instead of module globals, as the reference ``config.py`` does) lets
tests and benchmarks run several differently configured HOMS apps in one process.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hp2p.homs.peerlist import DEFAULT_MESH_LIST_SIZE, DEFAULT_TREE_LIST_SIZE
from hp2p.homs.secrets import SCRYPT_N

DEFAULT_DATABASE = "sqlite:///hp2p.db"


class SettingsError(ValueError):
    """A setting that cannot work; the message says which and what to do."""


@dataclass(frozen=True, slots=True)
class HomsSettings:
    """Everything a HOMS instance needs to know at start.

    ``database`` accepts the plain URL forms (``sqlite:///file.db``,
    ``postgresql://user@host/db``) as well as explicit async-driver URLs.
    """

    database: str = DEFAULT_DATABASE
    host: str = "127.0.0.1"
    port: int = 8081
    #: Seconds between expiry sweeps (PSM FE); the reference sweeps every 30 s.
    expiry_sweep: float = 5.0
    #: Delete an overlay when its last peer leaves or expires (the reference behaviour).
    #: Off by default: an overlay lives until its owner removes it, unless it was created
    #: with the per-overlay ``delete-when-empty`` extension.
    delete_empty_overlays: bool = False
    tree_peer_list_size: int = DEFAULT_TREE_LIST_SIZE
    mesh_peer_list_size: int = DEFAULT_MESH_LIST_SIZE
    #: Default ``expires`` (seconds) of a peer that sends none; the reference uses 3600.
    default_peer_expires: int = 3600
    #: Largest request body accepted; larger ones get 413 before they are read in full.
    max_body_bytes: int = 64 * 1024
    tls_cert: Path | None = None
    tls_key: Path | None = None
    log_level: str = "info"
    #: scrypt cost for admin keys (see ``hp2p.homs.secrets``); tests may lower it.
    admin_key_cost: int = SCRYPT_N
    #: A second listening port for the signalling/monitoring WebSocket (the reference UI and
    #: peers use ``ws://host:8082``). ``None``: the WebSocket is served on ``port`` only (at
    #: ``/ws`` and at the bare path). ``GET /api/InitData`` announces the port that serves it.
    ws_port: int | None = None
    #: ``secure`` (authenticated hello, overlay-scoped relays, errors reported) or
    #: ``etri-2023`` (the reference's open, silent relay, for reference peers).
    signalling_profile: str = "secure"
    #: Per-socket message rate limit of the WebSocket (messages/s, and the burst allowed).
    ws_rate: float = 50.0
    ws_burst: int = 200
    #: Seed for the mesh peer-list choice; ``None`` means fresh OS randomness.
    seed: int | None = None
    #: Where the credential signing keys live (``None``: beside the SQLite file, else the
    #: user's state directory; :func:`hp2p.homs.credentials.default_key_dir`).
    key_dir: Path | None = None
    #: Seconds a membership credential is valid; peers renew it with every refresh.
    credential_ttl: int = 120
    #: The security profile of an overlay whose creation does not say (docs/security.md).
    default_security: str = "credentials"
    #: Keep the signing keys in memory only (tests): credentials do not survive a restart.
    ephemeral_keys: bool = False

    def keys_path(self) -> Path:
        """The key directory in use: ``key_dir``, else the default for ``database``."""
        from hp2p.homs.credentials import default_key_dir

        return self.key_dir if self.key_dir is not None else default_key_dir(self.database)

    #: Wrong admin keys allowed per client address: refilled per second, and the burst (each
    #: overlay allows four times both); beyond, 429 with Retry-After (hp2p.homs.limits).
    admin_key_rate: float = 0.1
    admin_key_burst: int = 10
    #: Overlay creations allowed per client address: per second, and the burst.
    create_rate: float = 1.0
    create_burst: int = 60
    #: Entries kept per rate-limit table (LRU): client addresses are attacker-chosen.
    limit_table_size: int = 10_000
    #: Seconds a client has for a request's line and headers, then for its body, and that a
    #: keep-alive connection may stay idle between requests (hp2p.homs.connections).
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    idle_timeout: float = 5.0
    #: Concurrent HTTP connections; at the cap the longest-idle one is closed for a newcomer.
    max_connections: int = 1000
    #: The operator credential of WebSocket monitoring (``secure`` profile). ``hp2p homs``
    #: reads it from (or creates it in) ``operator_token_file``; ``None``: the app makes a
    #: random one (``app.state.operator_token``), which in-process callers read there.
    operator_token: str | None = None
    operator_token_file: Path | None = None

    def check(self) -> HomsSettings:
        """Raise :class:`SettingsError` for a value that cannot work, else return self."""
        if not 0 <= self.port <= 65535:
            raise SettingsError(f"--port must be 0..65535, got {self.port}")
        if self.expiry_sweep <= 0:
            raise SettingsError(f"--expiry-sweep must be > 0 seconds, got {self.expiry_sweep}")
        if not 1 <= self.tree_peer_list_size <= 100:
            raise SettingsError(f"--peer-list-size must be 1..100, got {self.tree_peer_list_size}")
        if not 1 <= self.mesh_peer_list_size <= 100:
            raise SettingsError(
                f"--mesh-peer-list-size must be 1..100, got {self.mesh_peer_list_size}"
            )
        if (self.tls_cert is None) != (self.tls_key is None):
            raise SettingsError("give both --tls-cert and --tls-key, or neither")
        for path in (self.tls_cert, self.tls_key):
            if path is not None and not path.is_file():
                raise SettingsError(f"TLS file not found: {path}")
        if self.ws_port is not None and not 1 <= self.ws_port <= 65535:
            raise SettingsError(f"--ws-port must be 1..65535, got {self.ws_port}")
        if self.signalling_profile not in ("secure", "etri-2023"):
            raise SettingsError(
                "--signalling-profile must be 'secure' or 'etri-2023', "
                f"not {self.signalling_profile!r}"
            )
        if self.ws_rate <= 0 or self.ws_burst < 1:
            raise SettingsError(
                f"WebSocket rate limit must be > 0 msg/s with burst >= 1, "
                f"got {self.ws_rate} and {self.ws_burst}"
            )
        if self.credential_ttl < 10:
            raise SettingsError(
                f"--credential-ttl must be >= 10 seconds, got {self.credential_ttl}"
            )
        if self.default_security not in ("credentials", "reference-compat"):
            raise SettingsError(
                "--default-security must be 'credentials' or 'reference-compat', "
                f"not {self.default_security!r}"
            )
        if self.admin_key_rate <= 0 or self.admin_key_burst < 1:
            raise SettingsError(
                "--admin-key-rate must be > 0 per second and --admin-key-burst >= 1, got "
                f"{self.admin_key_rate} and {self.admin_key_burst}"
            )
        if self.create_rate <= 0 or self.create_burst < 1:
            raise SettingsError(
                "--create-rate must be > 0 per second and --create-burst >= 1, got "
                f"{self.create_rate} and {self.create_burst}"
            )
        for name, value in (
            ("--header-timeout", self.header_timeout),
            ("--body-timeout", self.body_timeout),
            ("--idle-timeout", self.idle_timeout),
        ):
            if value <= 0:
                raise SettingsError(f"{name} must be > 0 seconds, got {value}")
        if self.max_connections < 1:
            raise SettingsError(f"--max-connections must be >= 1, got {self.max_connections}")
        if self.limit_table_size < 1:
            raise SettingsError(f"--limit-table-size must be >= 1, got {self.limit_table_size}")
        if self.max_body_bytes < 1024:
            raise SettingsError(f"max_body_bytes must be >= 1024, got {self.max_body_bytes}")
        if self.admin_key_cost < 2 or self.admin_key_cost & (self.admin_key_cost - 1):
            raise SettingsError(
                f"admin_key_cost must be a power of two >= 2, got {self.admin_key_cost}"
            )
        return self
