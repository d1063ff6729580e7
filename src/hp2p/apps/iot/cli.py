"""`hp2p iot …`: the IoT service's commands, one module per part (gateway, sensor, state,
history, watch); each module exports ``command`` and ``EPILOG`` and is imported only here."""

from __future__ import annotations

from hp2p.apps.console import command_group

HELP = (
    "IoT data streaming (Q.4100 §9.1): MQTT devices into a CoreTree, live state on a "
    "SubTree, history on a SubMesh (docs/iot.md).\n\nExamples:\n\n"
    "  hp2p iot sensor --devices 10 --rate 50\n\n"
    "  hp2p iot gateway --mqtt mqtt://127.0.0.1:1883 --topic 'sensors/#' --overlay iot"
)

#: sub-command name → module under hp2p.apps.iot that defines ``command`` and ``EPILOG``
COMMANDS: dict[str, str] = {
    "gateway": "gateway",
    "sensor": "sensor",
    "bridge": "bridge_command",
    "state": "state_member",
    "history": "history_command",
    "watch": "watch",
}


app = command_group(HELP, "hp2p.apps.iot", COMMANDS)
