"""A CoreTree peer process loads only what it uses: its memory is metric 7 (≤ 30 MB/process).

Each heavy package below costs megabytes of RSS in every peer process; a CoreTree peer needs
none of them (the web stack serves only ``--api``, the SubMesh code and its signatures only
SubMesh peers, the CLI stack only the parent process that parses the command line).
"""

from __future__ import annotations

import json
import subprocess
import sys

NOT_IN_A_CORETREE_PEER = (
    "cryptography",  # SubMesh manifest signatures
    "hp2p.peer.mesh",
    "fastapi",  # the local API, only with --api
    "uvicorn",
    "sqlalchemy",  # the HOMS
    "typer",  # the command line: parsed by the parent process
    "rich",
)


def test_the_peer_runtime_imports_no_heavy_package_it_does_not_use() -> None:
    probe = (
        "import json, sys\n"
        "import hp2p.peer.daemon\n"
        f"heavy = {list(NOT_IN_A_CORETREE_PEER)!r}\n"
        "print(json.dumps(sorted(m for m in heavy if m in sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert json.loads(out.stdout) == []
