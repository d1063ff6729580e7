"""``hp2p overlay``: list, show, remove and modify the overlays of a HOMS (docs/operate.md)."""
