"""Where the MQTT broker is: ``mqtt://[USER[:PASSWORD]@]HOST[:PORT]`` (``mqtts://`` for TLS).

The gateway and the simulated sensors name their broker the same way; this module turns the
URL into :class:`BrokerAddress` and the keyword arguments of an ``aiomqtt.Client``. The
password may also come from ``$HP2P_MQTT_PASSWORD``, which, unlike argv, other users of the
machine cannot read.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

__all__ = ["BrokerAddress", "BrokerError", "parse_broker"]

PASSWORD_ENV = "HP2P_MQTT_PASSWORD"


class BrokerError(ValueError):
    """A broker URL that cannot be used; the message says how to write one."""


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    host: str
    port: int
    tls: bool = False
    username: str | None = None
    password: str | None = None

    def __str__(self) -> str:
        """The URL without the password (for events and logs)."""
        user = f"{self.username}@" if self.username else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'mqtts' if self.tls else 'mqtt'}://{user}{host}:{self.port}"

    def client_kwargs(self) -> dict[str, Any]:
        """``hostname``, ``port`` and credentials/TLS for ``aiomqtt.Client``."""
        out: dict[str, Any] = {"hostname": self.host, "port": self.port}
        if self.username is not None:
            out["username"] = self.username
            out["password"] = self.password
        if self.tls:
            out["tls_context"] = ssl.create_default_context()
        return out


def parse_broker(url: str, environ: dict[str, str] | None = None) -> BrokerAddress:
    """The broker named by ``url``; :class:`BrokerError` says what is wrong with it."""
    example = "e.g. mqtt://127.0.0.1:1883"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise BrokerError(f"bad MQTT broker URL {url!r}: {exc} ({example})") from None
    if parts.scheme not in ("mqtt", "mqtts"):
        raise BrokerError(f"the MQTT broker URL must start with mqtt:// or mqtts://, {example}")
    if not parts.hostname:
        raise BrokerError(f"the MQTT broker URL {url!r} names no host ({example})")
    try:
        parts.hostname.encode("idna")
    except UnicodeError:
        raise BrokerError(f"the MQTT broker URL {url!r} has an invalid host name") from None
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise BrokerError(f"the MQTT broker URL {url!r} has a path or query; give HOST:PORT only")
    tls = parts.scheme == "mqtts"
    env = os.environ if environ is None else environ
    password = unquote(parts.password) if parts.password is not None else env.get(PASSWORD_ENV)
    return BrokerAddress(
        host=parts.hostname,
        port=port if port is not None else (8883 if tls else 1883),
        tls=tls,
        username=unquote(parts.username) if parts.username else None,
        password=password if parts.username else None,
    )
