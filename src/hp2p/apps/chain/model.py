"""Transactions and blocks of the hp2p chain: their encoding, hashes and signatures.

Everything here travels between nodes that do not trust each other, so a decoder checks sizes
before it allocates, and every hash and signature covers exact encoded bytes with a domain tag
and the chain id (a transaction signed for one chain cannot be replayed on another).

Encoding is msgpack arrays (msgspec): compact, deterministic for a given value, and fast to
decode; a hash is SHA-256 over the encoded *unsigned* part.
"""

from __future__ import annotations

import hashlib

import msgspec

from hp2p.trust.keys import SigningKey, Verifier, length_prefixed

__all__ = [
    "MAX_BLOCK_BYTES",
    "MAX_BLOCK_TXS",
    "MAX_TX_BYTES",
    "Block",
    "BlockHeader",
    "ChainFormatError",
    "Transaction",
    "address_of",
    "decode_block",
    "decode_tx",
    "encode_block",
    "encode_tx",
    "merkle_root",
    "sign_header",
    "sign_tx",
]

#: Largest encoded transaction accepted (a transfer is about 190 bytes).
MAX_TX_BYTES = 1024
#: Most transactions in one block, and the largest encoded block.
MAX_BLOCK_TXS = 5000
MAX_BLOCK_BYTES = MAX_BLOCK_TXS * MAX_TX_BYTES + 4096
#: Largest amount or fee (2**62): balances stay exact integers far from any overflow.
MAX_AMOUNT = 1 << 62

_TX_TAG = b"hp2p-chain-tx/1"
_HEADER_TAG = b"hp2p-chain-block/1"


class ChainFormatError(ValueError):
    """Bytes that are not a well-formed transaction or block; ``str(err)`` says why."""


def address_of(public: bytes) -> str:
    """An account's address: ``0x`` and 40 hex digits of SHA-256 of its Ed25519 public key."""
    return "0x" + hashlib.sha256(public).digest()[:20].hex()


class Transaction(msgspec.Struct, array_like=True, frozen=True):
    """A signed transfer of ``amount`` from the key's account to ``to``, paying ``fee``.

    ``nonce`` is the sender's count of earlier transactions: each is accepted once, in order.
    """

    chain_id: str
    sender: bytes  # Ed25519 public key (32 bytes)
    to: str  # address
    amount: int
    fee: int
    nonce: int
    signature: bytes = b""

    @property
    def origin(self) -> str:
        return address_of(self.sender)

    def unsigned(self) -> bytes:
        return _encoder.encode(
            (self.chain_id, self.sender, self.to, self.amount, self.fee, self.nonce)
        )

    @property
    def hash(self) -> str:
        return hashlib.sha256(self.unsigned()).hexdigest()

    def signed_message(self) -> bytes:
        return length_prefixed(_TX_TAG, self.chain_id.encode(), self.unsigned())

    def signature_ok(self, verifier: Verifier) -> bool:
        return verifier.verify(self.sender, self.signature, self.signed_message())


class BlockHeader(msgspec.Struct, array_like=True, frozen=True):
    """What a producer signs: the block's place, its content's roots, who made it and when.

    ``round`` is 0 when the scheduled producer made the block, k when the k-th next producer
    took the slot because the earlier ones missed it.
    """

    chain_id: str
    height: int
    parent: str  # hex hash of the parent header ("" for height 0)
    tx_root: str
    state_root: str
    producer: bytes  # Ed25519 public key
    round: int
    timestamp: float
    signature: bytes = b""

    def unsigned(self) -> bytes:
        return _encoder.encode(
            (
                self.chain_id,
                self.height,
                self.parent,
                self.tx_root,
                self.state_root,
                self.producer,
                self.round,
                self.timestamp,
            )
        )

    @property
    def hash(self) -> str:
        return hashlib.sha256(self.unsigned()).hexdigest()

    def signed_message(self) -> bytes:
        return length_prefixed(_HEADER_TAG, self.chain_id.encode(), self.unsigned())

    def signature_ok(self, verifier: Verifier) -> bool:
        return verifier.verify(self.producer, self.signature, self.signed_message())


class Block(msgspec.Struct, array_like=True, frozen=True):
    header: BlockHeader
    txs: list[Transaction]

    @property
    def hash(self) -> str:
        return self.header.hash

    @property
    def height(self) -> int:
        return self.header.height


_encoder = msgspec.msgpack.Encoder()
_tx_decoder = msgspec.msgpack.Decoder(Transaction)
_block_decoder = msgspec.msgpack.Decoder(Block)


def encode_tx(tx: Transaction) -> bytes:
    return _encoder.encode(tx)


def encode_block(block: Block) -> bytes:
    return _encoder.encode(block)


def decode_tx(data: bytes) -> Transaction:
    if len(data) > MAX_TX_BYTES:
        raise ChainFormatError(f"transaction of {len(data)} bytes exceeds {MAX_TX_BYTES}")
    try:
        tx = _tx_decoder.decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise ChainFormatError(f"not a transaction: {exc}") from None
    check_tx_format(tx)
    return tx


def decode_block(data: bytes) -> Block:
    if len(data) > MAX_BLOCK_BYTES:
        raise ChainFormatError(f"block of {len(data)} bytes exceeds {MAX_BLOCK_BYTES}")
    try:
        block = _block_decoder.decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise ChainFormatError(f"not a block: {exc}") from None
    check_header_format(block.header)
    if len(block.txs) > MAX_BLOCK_TXS:
        raise ChainFormatError(f"block holds {len(block.txs)} transactions, over {MAX_BLOCK_TXS}")
    for tx in block.txs:
        check_tx_format(tx)
    return block


def _hex_hash(value: str) -> bool:
    return len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def check_tx_format(tx: Transaction) -> None:
    """Raise :class:`ChainFormatError` unless every field has a valid shape and range."""
    if len(tx.sender) != 32 or len(tx.signature) != 64:
        raise ChainFormatError("sender key must be 32 bytes and the signature 64")
    if not (len(tx.to) == 42 and tx.to.startswith("0x") and _hex_hash(tx.to[2:] + "0" * 24)):
        raise ChainFormatError(f"recipient {tx.to[:50]!r} is not an address (0x + 40 hex)")
    if not (0 < tx.amount <= MAX_AMOUNT and 0 <= tx.fee <= MAX_AMOUNT):
        raise ChainFormatError("amount must be 1..2**62 and fee 0..2**62")
    if not 0 <= tx.nonce < 1 << 62:
        raise ChainFormatError("nonce must be 0..2**62")
    if not 0 < len(tx.chain_id) <= 64:
        raise ChainFormatError("chain id must be 1..64 characters")


def check_header_format(header: BlockHeader) -> None:
    if not 0 < len(header.chain_id) <= 64:
        raise ChainFormatError("chain id must be 1..64 characters")
    if not 0 <= header.height < 1 << 62 or not 0 <= header.round < 1 << 16:
        raise ChainFormatError("height must be 0..2**62 and round 0..65535")
    if header.height and not _hex_hash(header.parent):
        raise ChainFormatError("parent must be a 64-hex-digit hash")
    if not (_hex_hash(header.tx_root) and _hex_hash(header.state_root)):
        raise ChainFormatError("tx and state roots must be 64-hex-digit hashes")
    if len(header.producer) != 32 or len(header.signature) not in (0, 64):
        raise ChainFormatError("producer key must be 32 bytes and the signature 64")
    if not (0 <= header.timestamp < 1e11):
        raise ChainFormatError(f"timestamp {header.timestamp!r} is not unix seconds")


def sign_tx(tx: Transaction, key: SigningKey) -> Transaction:
    unsigned = msgspec.structs.replace(tx, sender=key.public, signature=b"")
    return msgspec.structs.replace(unsigned, signature=key.sign(unsigned.signed_message()))


def sign_header(header: BlockHeader, key: SigningKey) -> BlockHeader:
    unsigned = msgspec.structs.replace(header, producer=key.public, signature=b"")
    return msgspec.structs.replace(unsigned, signature=key.sign(unsigned.signed_message()))


def merkle_root(hashes: list[str]) -> str:
    """The Merkle root of transaction hashes (hex).

    Leaves and inner nodes are tagged differently, so an inner node can never pass as a leaf,
    and an odd node is carried up unchanged rather than paired with a copy of itself (pairing
    copies lets two different lists share a root).
    """
    if not hashes:
        return hashlib.sha256(b"hp2p-chain-empty").hexdigest()
    level = [hashlib.sha256(b"\0" + bytes.fromhex(h)).digest() for h in hashes]
    while len(level) > 1:
        paired = [
            hashlib.sha256(b"\1" + level[i] + level[i + 1]).digest()
            for i in range(0, len(level) - 1, 2)
        ]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
    return level[0].hex()
