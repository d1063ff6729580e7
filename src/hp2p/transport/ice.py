"""WebRTC facts a peer checks at start-up without importing aiortc: ICE server URLs, and the
largest message a data channel carries.

Settings are checked when a peer starts, before (and whether or not) the WebRTC transport is
loaded, so the parsing lives here. One URL per server; TURN credentials ride in the userinfo
(``turn:USER:CREDENTIAL@HOST:PORT``, percent-encoded where needed) so that one repeatable
option (``--ice-server``) says everything, and several TURN servers can have different ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote

#: The largest data-channel message aiortc accepts (the ``max-message-size`` its SDP
#: advertises). One R2 frame is one message, so a WebRTC peer caps what it publishes (tree) or
#: cuts (SubMesh pieces) below it.
MAX_MESSAGE = 262144


@dataclass(frozen=True, slots=True)
class IceServer:
    """One STUN or TURN server: ``url`` without credentials, and the credentials apart."""

    url: str
    username: str | None = None
    credential: str | None = None


def parse_ice_server(url: str) -> IceServer:
    """``stun:HOST:PORT``, ``turn:HOST:PORT`` or ``turn:USER:CREDENTIAL@HOST:PORT`` (also
    ``stuns:``/``turns:``); ValueError names what is wrong."""
    scheme, sep, rest = url.strip().partition(":")
    if not sep or scheme not in ("stun", "stuns", "turn", "turns") or not rest:
        raise ValueError(
            f"not an ICE server URL: {url!r}; expected stun:HOST:PORT or "
            "turn:USER:CREDENTIAL@HOST:PORT"
        )
    userinfo, at, hostport = rest.rpartition("@")
    if not hostport:
        raise ValueError(f"no HOST:PORT in the ICE server URL {url!r}")
    if not at:
        return IceServer(f"{scheme}:{hostport}")
    if scheme.startswith("stun"):
        raise ValueError(f"a STUN server takes no credentials: {url!r}")
    user, colon, credential = userinfo.partition(":")
    if not colon or not user:
        raise ValueError(f"TURN credentials must be given as USER:CREDENTIAL@ in {url!r}")
    return IceServer(f"{scheme}:{hostport}", unquote(user), unquote(credential))


def parse_ice_servers(text: str) -> list[IceServer]:
    """A comma-separated list (the ``ice_servers`` setting); empty: no server."""
    return [parse_ice_server(u) for u in text.split(",") if u.strip()]


def split_list(text: str) -> list[str]:
    """The items of a comma-separated setting, blanks dropped."""
    return [item.strip() for item in text.split(",") if item.strip()]
