"""Trust: who may be a member of an overlay, and who said what (issue #11, docs/security.md).

Three mechanisms, each a small pure module the HOMS, the peer cores and the simulator share:

* :mod:`hp2p.trust.keys` — Ed25519 keys: one spelling (``ed25519:<hex>``), files kept 0600;
* :mod:`hp2p.trust.credential` — the **membership credential** the HOMS signs at join and
  renews at refresh (overlay, peer-id, ticket, the peer's public key, role, expiry), and the
  verifier a peer checks it with;
* :mod:`hp2p.trust.link` — the **proof of key possession** that binds a credential to one R2
  connection (fresh nonces from both ends), so a credential copied off the wire is useless;
* :mod:`hp2p.trust.origin` — the **source signature** on each BROADCAST_DATA, so a relay can
  check who originated a message before it relays, caches or delivers it.

Nothing here does I/O or reads a clock: callers pass ``now`` (wall-clock seconds) in.
"""
