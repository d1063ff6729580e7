"""Transactions, blocks and heads as JSON, for the node's HTTP API and the CLI.

Bytes are hex; a transaction can also be posted as JSON in this shape (:func:`tx_from_json`),
which is checked as strictly as the msgpack form (:func:`hp2p.apps.chain.model.check_tx_format`).
"""

from __future__ import annotations

from typing import Any

import msgspec

from hp2p.apps.chain.model import (
    MAX_TX_BYTES,
    Block,
    ChainFormatError,
    Transaction,
    address_of,
    check_tx_format,
    decode_tx,
    encode_tx,
)

__all__ = ["block_json", "head_json", "tx_from_json", "tx_json"]


def tx_json(tx: Transaction) -> dict[str, Any]:
    return {
        "hash": tx.hash,
        "chain_id": tx.chain_id,
        "from": tx.origin,
        "sender": tx.sender.hex(),
        "to": tx.to,
        "amount": tx.amount,
        "fee": tx.fee,
        "nonce": tx.nonce,
        "signature": tx.signature.hex(),
    }


def tx_from_json(doc: Any) -> Transaction:
    """A transaction from its JSON form; :class:`ChainFormatError` says which field is wrong."""
    if not isinstance(doc, dict):
        raise ChainFormatError("a transaction in JSON is an object with chain_id, sender, to …")
    try:
        ints = {k: doc[k] for k in ("amount", "fee", "nonce")}
        if not all(type(v) is int for v in ints.values()):
            raise ChainFormatError("amount, fee and nonce must be integers")
        text = {k: doc[k] for k in ("chain_id", "sender", "to", "signature")}
        if not all(isinstance(v, str) and len(v) <= 256 for v in text.values()):
            raise ChainFormatError("chain_id, sender, to and signature must be short strings")
        tx = Transaction(
            chain_id=text["chain_id"],
            sender=bytes.fromhex(text["sender"]),
            to=text["to"],
            amount=ints["amount"],
            fee=ints["fee"],
            nonce=ints["nonce"],
            signature=bytes.fromhex(text["signature"]),
        )
    except KeyError as exc:
        raise ChainFormatError(f"the transaction has no {exc.args[0]!r} field") from None
    except ValueError as exc:  # bad hex
        if isinstance(exc, ChainFormatError):
            raise
        raise ChainFormatError(f"sender and signature must be hex: {exc}") from None
    check_tx_format(tx)
    if len(encode_tx(tx)) > MAX_TX_BYTES:
        raise ChainFormatError(f"the transaction is larger than {MAX_TX_BYTES} bytes")
    return tx


def tx_from_body(body: bytes, content_type: str) -> Transaction:
    """A posted transaction: msgpack bytes, or JSON when the content type says so."""
    if "json" in content_type:
        try:
            doc = msgspec.json.decode(body)
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise ChainFormatError(f"the body is not JSON: {exc}") from None
        return tx_from_json(doc)
    return decode_tx(body)


def block_json(block: Block, *, final: bool, with_txs: bool = True) -> dict[str, Any]:
    h = block.header
    out: dict[str, Any] = {
        "height": h.height,
        "hash": block.hash,
        "parent": h.parent,
        "producer": h.producer.hex(),
        "producer_address": address_of(h.producer),
        "round": h.round,
        "timestamp": h.timestamp,
        "tx_root": h.tx_root,
        "state_root": h.state_root,
        "tx_count": len(block.txs),
        "final": final,
    }
    if with_txs:
        out["txs"] = [tx_json(t) for t in block.txs]
    return out


def head_json(block: Block, final_height: int) -> dict[str, Any]:
    """A new head as the API and ``WS /heads`` give it."""
    return {**block_json(block, final=False, with_txs=False), "final_height": final_height}
