"""R2 over TLS 1.3 (``tls://HOST:PORT``): confidentiality, with no certificate authority.

A peer that listens with TLS presents a self-signed certificate made from its **membership
key**, the Ed25519 key its HOMS credential names. The dialer accepts any certificate during the
handshake (there is no CA to check it against) and remembers the key it saw; link admission
(:mod:`hp2p.peer.admission`) then refuses the link unless that key is the one the responder's
credential names. A man in the middle would have to present its own certificate, whose key no
credential of the overlay names: it can neither read the traffic nor join the link.

What TLS adds to plain TCP is secrecy and integrity against anyone on the network path; what
it does not add is membership: on an overlay without credentials the certificate proves only
that the same peer stays at the other end (docs/security.md).
"""

from __future__ import annotations

import datetime
import os
import ssl
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.x509.oid import NameOID

from hp2p.trust.keys import SigningKey

CERT_LIFETIME = datetime.timedelta(days=3650)
"""The certificate carries no trust of its own (the credential does): it never has to expire."""


def parse_tls_address(address: str) -> tuple[str, int]:
    """Split ``tls://HOST:PORT`` into host and port."""
    parts = urlsplit(address)
    if parts.scheme != "tls" or not parts.hostname or parts.port is None:
        raise ValueError(
            f"not a TLS peer address: {address!r}; expected tls://HOST:PORT, "
            "e.g. tls://127.0.0.1:7000"
        )
    return parts.hostname, parts.port


def format_tls_address(host: str, port: int) -> str:
    return f"tls://[{host}]:{port}" if ":" in host else f"tls://{host}:{port}"


def certificate(key: SigningKey) -> bytes:
    """A self-signed certificate (PEM) for ``key``: only its public key matters."""
    private = key.private
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hp2p peer")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + CERT_LIFETIME)
        .sign(private, None)
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def server_context(key: SigningKey) -> ssl.SSLContext:
    """The listening side: TLS 1.3 only, the certificate of ``key``."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    pem_key = key.private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # ssl loads certificates only from files: a private folder, removed at once
    with tempfile.TemporaryDirectory(prefix="hp2p-tls-") as folder:
        cert_path, key_path = Path(folder) / "cert.pem", Path(folder) / "key.pem"
        cert_path.write_bytes(certificate(key))
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(pem_key)
        context.load_cert_chain(cert_path, key_path)
    return context


def client_context() -> ssl.SSLContext:
    """The dialing side: TLS 1.3, any certificate (link admission checks its key)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def peer_key(ssl_object: object) -> bytes | None:
    """The raw Ed25519 key of the certificate the other end presented, if any."""
    if not isinstance(ssl_object, ssl.SSLObject | ssl.SSLSocket):
        return None
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        return None
    public = x509.load_der_x509_certificate(der).public_key()
    if not isinstance(public, Ed25519PublicKey):
        return None
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
