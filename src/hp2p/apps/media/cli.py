"""`hp2p media …`: the live streaming service's commands, one module per part (source,
viewer, bridge, recorder); each exports ``command`` and ``EPILOG`` and is imported only here."""

from __future__ import annotations

from hp2p.apps.console import command_group

HELP = (
    "Live multimedia streaming (Q.4100 §9.3): ffmpeg segments on a CoreTree, live HLS "
    "from each viewer's peer, recordings on a SubMesh (docs/media.md).\n\nExamples:\n\n"
    "  hp2p media source --create media --input testsrc --stream cam1\n\n"
    "  hp2p media viewer --join media --api 127.0.0.1:8700"
)

#: sub-command name → module under hp2p.apps.media that defines ``command`` and ``EPILOG``
COMMANDS: dict[str, str] = {
    "source": "source",
    "viewer": "viewer",
    "bridge": "bridge_command",
    "recorder": "recorder",
}


app = command_group(HELP, "hp2p.apps.media", COMMANDS)
