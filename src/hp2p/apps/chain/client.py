"""The client commands of ``hp2p chain``: send a transfer, read a balance, watch the heads.

They speak to a node's API (:mod:`hp2p.apps.chain.api`) over HTTP and WebSocket; a transfer
is signed here, with the sender's key file, so the key never leaves this process.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from hp2p.apps.chain.model import Transaction, address_of, encode_tx, sign_tx
from hp2p.trust.keys import KeyFileError, SigningKey

__all__ = ["balance", "send", "watch"]

SEND_EPILOG = """
Examples:

  hp2p chain send --api http://127.0.0.1:8601 --key mychain/account-1.key \\
      --to 0x5c3e… --amount 25

  hp2p chain send --api http://127.0.0.1:8601 --key mychain/account-1.key \\
      --to 0x5c3e… --amount 25 --fee 2 --wait        # until it is in a block

The nonce is read from the node (its next nonce plus the sender's waiting transactions).
"""

BALANCE_EPILOG = """
Examples:

  hp2p chain balance --api http://127.0.0.1:8611 0x5c3e…
"""

WATCH_EPILOG = """
Examples:

  hp2p chain watch --api http://127.0.0.1:8611             # until Ctrl-C

  hp2p chain watch --api http://127.0.0.1:8611 --count 5   # exit after 5 new heads
"""

ApiUrl = Annotated[str, typer.Option("--api", help="A node's API, http://HOST:PORT.")]


def _fail(message: str) -> typer.Exit:
    typer.echo(f"hp2p chain: {message}", err=True)
    return typer.Exit(1)


def _get(api: str, path: str) -> Any:
    try:
        answer = httpx.get(f"{api.rstrip('/')}{path}", timeout=10)
    except httpx.HTTPError as exc:
        raise _fail(f"cannot reach the node at {api}: {exc} (is it running with --api?)") from None
    if answer.status_code != 200:
        raise _fail(f"{path}: {answer.status_code} {answer.text[:300]}")
    return answer.json()


def send(
    api: ApiUrl,
    key: Annotated[Path, typer.Option("--key", help="The sender's key file.")],
    to: Annotated[str, typer.Option("--to", help="Recipient address (0x + 40 hex).")],
    amount: Annotated[int, typer.Option("--amount", help="Amount to transfer.", min=1)],
    fee: Annotated[int, typer.Option("--fee", help="Fee for the producer.", min=0)] = 1,
    wait: Annotated[bool, typer.Option("--wait", help="Wait until it is in a block.")] = False,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds --wait waits.")] = 60.0,
) -> None:
    """Sign a transfer with KEY and post it to a producer; prints the transaction hash."""
    try:
        signer = SigningKey.load(key)
    except KeyFileError as exc:
        raise _fail(str(exc)) from None
    origin = address_of(signer.public)
    chain_id = str(_get(api, "/status")["chain_id"])
    account = _get(api, f"/account/{origin}")
    nonce = int(account["nonce"]) + int(account.get("pending", 0))
    tx = sign_tx(Transaction(chain_id, signer.public, to.lower(), amount, fee, nonce), signer)
    try:
        answer = httpx.post(
            f"{api.rstrip('/')}/tx",
            content=encode_tx(tx),
            headers={"Content-Type": "application/msgpack"},
            timeout=10,
        )
    except httpx.HTTPError as exc:
        raise _fail(f"cannot reach the node at {api}: {exc}") from None
    if answer.status_code != 202:
        detail = (
            answer.json().get("detail")
            if answer.headers.get("content-type", "").startswith("application/json")
            else answer.text
        )
        raise _fail(f"the node refused the transaction ({answer.status_code}): {detail}")
    typer.echo(tx.hash)
    if wait:
        _wait_in_block(api, tx.hash, timeout)


def _wait_in_block(api: str, tx_hash: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = _get(api, f"/tx/{tx_hash}")
        if status["status"] in ("in_block", "final"):
            typer.echo(f"{status['status']} at height {status['height']}")
            return
        time.sleep(0.25)  # polling the node's API, bounded by the deadline
    raise _fail(f"not in a block after {timeout:g} s (still {status['status']})")


def balance(
    api: ApiUrl,
    address: Annotated[str, typer.Argument(help="Account address (0x + 40 hex).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the JSON answer.")] = False,
) -> None:
    """Print an account's balance and next nonce at the node's head."""
    account = _get(api, f"/account/{address.lower()}")
    if as_json:
        typer.echo(json.dumps(account))
        return
    typer.echo(
        f"{account['address']}: balance {account['balance']}, nonce {account['nonce']} "
        f"(height {account['height']})"
    )


def watch(
    api: ApiUrl,
    count: Annotated[
        int, typer.Option("--count", help="Exit after this many new heads (0: never).", min=0)
    ] = 0,
) -> None:
    """Show the chain's head live: height, hash, transactions, final height."""
    from rich.live import Live
    from rich.table import Table
    from websockets.exceptions import WebSocketException
    from websockets.sync.client import connect

    url = api.rstrip("/").replace("http://", "ws://", 1).replace("https://", "wss://", 1)
    seen, txs = 0, 0
    rows: list[dict[str, Any]] = []

    def table() -> Table:
        out = Table(title=f"hp2p chain at {api}: {seen} new heads, {txs} transactions")
        for name in ("height", "hash", "txs", "final", "producer"):
            out.add_column(name)
        for head in rows[-10:]:
            out.add_row(
                str(head["height"]),
                head["hash"][:16],
                str(head["tx_count"]),
                str(head["final_height"]),
                head["producer_address"][:12],
            )
        return out

    try:
        with connect(f"{url}/heads", open_timeout=10) as ws, Live(table(), transient=False) as live:
            first = True
            while count == 0 or seen < count:
                head = json.loads(ws.recv())
                rows.append(head)
                if not first:
                    seen += 1
                    txs += int(head["tx_count"])
                first = False
                live.update(table())
    except (OSError, WebSocketException) as exc:
        raise _fail(f"cannot watch {api}: {exc}") from None
    except KeyboardInterrupt:
        pass
