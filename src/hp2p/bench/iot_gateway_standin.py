"""A minimal MQTT → CoreTree gateway, used by ``hp2p bench iot`` only where ``hp2p iot
gateway`` is not available (``--gateway standin``).

It does what the gateway's data path does and nothing else: subscribe to ``sensors/#``,
wrap each message in a :class:`~hp2p.apps.iot.reading.Reading` and broadcast it from the
root of a new CoreTree. No reconnects, no batching, no state: a stand-in for measuring.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time


async def main(homs: str, title: str, port: int, name: str) -> None:
    import aiomqtt

    from hp2p.apps.iot.reading import (
        APP_ID,
        PAYLOAD_TYPE,
        Reading,
        device_timestamp,
        encode_reading,
    )
    from hp2p.peer.api import Peer

    epoch = int(time.time())
    async with (
        Peer(homs, create=title, peer_id=name) as peer,
        aiomqtt.Client("127.0.0.1", port, identifier=name) as client,
    ):
        await client.subscribe("sensors/#", qos=0)
        print(json.dumps({"event": "joined", "peer_id": peer.peer_id, "t": time.time()}))
        sys.stdout.flush()
        number = 0
        async for message in client.messages:
            body = message.payload
            number += 1
            reading = Reading(
                topic=str(message.topic),
                payload=body,
                device_ts=device_timestamp(body),
                received_ts=time.time(),
                qos=int(message.qos),
                gateway=peer.peer_id,
                epoch=epoch,
                number=number,
            )
            await peer.publish(encode_reading(reading), app_id=APP_ID, payload_type=PAYLOAD_TYPE)


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--homs", required=True)
    parser.add_argument("--create", required=True, help="title of the CoreTree to create")
    parser.add_argument("--mqtt", type=int, required=True, help="broker port on 127.0.0.1")
    parser.add_argument("--name", default="gateway")
    args = parser.parse_args()
    try:
        asyncio.run(main(args.homs, args.create, args.mqtt, args.name))
    except KeyboardInterrupt:
        pass
    except Exception as exc:
        print(f"iot gateway stand-in: {type(exc).__name__}: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    cli()
