"""One wording for "this address cannot be listened on", for every listening command.

``hp2p peer --listen``/``--api`` and ``hp2p homs --host``/``--port`` all bind a socket a user
named; when that fails the user needs to know which address and port, and which of the two
usual causes it is: the port is taken (``EADDRINUSE``: pick another port) or the address is not
one of this machine's (``EADDRNOTAVAIL``: pick an address of one of its interfaces). The
errno says which, so the message does not have to guess.
"""

from __future__ import annotations

import errno
import socket

__all__ = ["bind_error_message"]


def bind_error_message(
    exc: OSError, host: str, port: int, option: str, host_option: str | None = None
) -> str:
    """The one line saying why ``host:port`` cannot be listened on.

    ``option`` names the flag that gave the port (``--listen``, ``--api``, ``--port``);
    ``host_option`` the one that gave the host when it is another (``hp2p homs --host``).
    """
    host_option = host_option or option
    shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if exc.errno == errno.EADDRINUSE:
        return (
            f"cannot listen on {shown}: port {port} is already in use on {host} (another "
            f"process listens there); choose another port for {option}"
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return (
            f"cannot listen on {shown}: {host} is not an address of this machine; give "
            f"{host_option} an address of one of its interfaces "
            "(e.g. 127.0.0.1, or 0.0.0.0 for all)"
        )
    if exc.errno == errno.EACCES:
        return (
            f"cannot listen on {shown}: permission denied (ports below 1024 need privileges); "
            f"choose another port for {option}"
        )
    if isinstance(exc, socket.gaierror):
        return (
            f"cannot listen on {shown}: the host name {host!r} does not resolve; "
            f"check {host_option}"
        )
    return f"cannot listen on {shown}: {exc.strerror or exc}; check {option}"
