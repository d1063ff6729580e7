"""See README.md (FE -> module table)."""
