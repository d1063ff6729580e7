"""Sub-overlays on R1 and the SubTree's single-source rule (Q.4100 §6).

A **SubTree** is a ``sub``/``tree`` overlay: the same push tree as the CoreTree, but only its
source peer (recorded by the HOMS as ``source-peer-id``) may publish. The rule is enforced by
the tree core itself (the DB FE, :mod:`hp2p.peer.broadcast`), so the simulator applies it as
a daemon does: :func:`subtree_source` reads the source from the overlay the peer joins and the
shell hands it to the core in ``JoinInfo.source_peer_id``; the core then refuses a publish on
any other peer with :class:`NotSourceError`, and drops (and counts, ``foreign_dropped``) data
of any other source before it is delivered or relayed.

This module also gives the HOMS client the one HOMP call the CoreTree client does not make:
creating a sub-overlay with the hp2p extension fields ``parent-overlay-id`` and
``source-peer-id``, and finding a member's address in the overlay status (a standby watching
its source).

**A shared source credential.** A SubTree's source peer-id belongs to a *bridge group*: the
active bridge and its standbys. Given the group's ``source_password``, the client joins with
it instead of the peer's random per-process password, so a standby that takes over can remove
the dead source's membership at once (:meth:`SubOverlayHomsClient.remove_member`) and join
under the same peer-id, instead of waiting for the HOMS to expire it.
"""

from __future__ import annotations

from typing import Any

import msgspec

from hp2p.peer.errors import NotSourceError
from hp2p.peer.homs_client import HomsClient, HomsError, PeerForgottenError, create_auth
from hp2p.wire import homp

__all__ = ["NotSourceError", "SubOverlayHomsClient", "subtree_source"]


def subtree_source(overlay: homp.QueryOverlay | None) -> str | None:
    """The only peer that may publish in ``overlay``: its source on a SubTree, else None."""
    if overlay is None or overlay.type != "sub" or overlay.sub_type != "tree":
        return None
    return overlay.source_peer_id or None


class SubOverlayHomsClient(HomsClient):
    """:class:`HomsClient` plus sub-overlay creation and member look-up (R1, HOMP).

    ``source_password``: the bridge group's shared password for a source peer-id (see above);
    every join through this client uses it.
    """

    def __init__(self, url: str, *, source_password: str | None = None, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        if source_password is not None and not source_password:
            raise ValueError("a source password must not be empty")
        self.source_password = source_password

    def join_password(self, password: str) -> str:
        return self.source_password or password

    async def holds_id(self) -> bool:
        """Whether the HOMS still lists this membership's peer-id at this peer's address.

        With a shared source password another bridge of the group can take the peer-id over;
        the old holder finds out here. A HOMS that cannot answer is taken as "still held": a
        standby cannot take over without the HOMS either.
        """
        m = self.membership
        if m is None:
            return False
        try:
            holder = await self.peer_address(m.overlay_id, m.peer_id)
        except HomsError:
            return True
        return holder == m.address

    async def refresh(self) -> int:
        """Refresh, unless another bridge of the group holds the peer-id now.

        A refresh carries the address, so with the shared password it would move the
        membership back to this (replaced) peer; instead the membership counts as forgotten
        (the peer shell then tries a new join, which the HOMS refuses while the id is held).
        """
        if self.source_password is not None and not await self.holds_id():
            m = self.membership
            raise PeerForgottenError(
                f"another bridge of the group holds source peer-id "
                f"{m.peer_id if m else '?'!r} now; this one stops"
            )
        return await super().refresh()

    async def leave(self) -> None:
        """Leave, unless another bridge of the group holds the peer-id now.

        The shared password would let this leave remove the *new* holder's membership.
        """
        held_by_another = (
            self.source_password is not None
            and self.membership is not None
            and not await self.holds_id()
        )
        if held_by_another:
            self._stop_refresh()
            self._pending_report = None
            self.membership = None
            return
        await super().leave()

    async def remove_member(
        self, overlay_id: str, peer_id: str, password: str, access_key: str | None = None
    ) -> None:
        """HybridOverlayLeave on behalf of a member that died, with the password it joined with.

        Raises :class:`HomsError` when the HOMS refuses (not a member, or another password).
        """
        request = homp.LeaveRequest(
            overlay=homp.OverlayAccess(
                overlay_id=overlay_id,
                auth=homp.OverlayAccessAuth(access_key=access_key) if access_key else None,
            ),
            peer=homp.LeavePeer(peer_id=peer_id, auth=homp.PeerAuth(password=password)),
        )
        await self._call(
            "DELETE", "/peer", request, homp.OverlayRefResponse, what="remove the dead source"
        )

    async def create_sub_overlay(
        self,
        title: str,
        *,
        sub_type: str,
        parent_overlay_id: str,
        source_peer_id: str,
        owner_id: str,
        admin_key: str,
        heartbeat_interval: int = 1,
        heartbeat_timeout: int = 3,
        description: str = "",
        access_key: str | None = None,
        source_key: str | None = None,
        parent_admin_key: str | None = None,
    ) -> str:
        """HybridOverlayCreation of a SubTree/SubMesh hanging off ``parent_overlay_id``.

        ``source_key`` (a SubMesh's ``ed25519:…`` manifest key) recorded at creation leaves no
        window in which another peer could claim the source's peer-id with its own key.
        ``parent_admin_key`` is the CoreTree owner's consent (its admin key), which an hp2p
        HOMS requires for a sub-overlay under a CoreTree (403 without it).
        """
        if sub_type not in ("tree", "mesh"):
            raise ValueError(f"sub-type must be 'tree' or 'mesh', not {sub_type!r}")
        overlay = homp.CreateOverlay(
            title=title,
            type="sub",
            sub_type=sub_type,  # type: ignore[arg-type]
            owner_id=owner_id,
            description=description,
            heartbeat_interval=heartbeat_interval,
            heartbeat_timeout=heartbeat_timeout,
            auth=msgspec.structs.replace(
                create_auth(admin_key, access_key), parent_admin_key=parent_admin_key
            ),
            parent_overlay_id=parent_overlay_id,
            source_peer_id=source_peer_id,
            source_key=source_key,
        )
        return await self._create(overlay, "create the sub-overlay")

    async def overlay_status(self, overlay_id: str) -> dict[str, Any]:
        """``GET /api/OverlayStatus``: the overlay with its members (hp2p HOMS)."""
        try:
            response = await self._http.get("/api/OverlayStatus", params={"overlay_id": overlay_id})
        except Exception as exc:
            raise HomsError(f"cannot read the status of {overlay_id!r}: {exc}") from None
        if response.status_code != 200:
            raise HomsError(
                f"the HOMS has no status for overlay {overlay_id!r} ({response.status_code})",
                response.status_code,
            )
        body: Any = msgspec.json.decode(response.content)
        if not isinstance(body, dict):
            raise HomsError("the HOMS overlay status is not a JSON object")
        return body

    async def peer_address(self, overlay_id: str, peer_id: str) -> str | None:
        """The R2 address a member registered, or None if it is not a member (now).

        One member (``/api/OverlayMember``), not the whole overlay: an active bridge asks
        this several times a second-ish for its source, whatever the sub-overlay's size.
        """
        try:
            response = await self._http.get(
                "/api/OverlayMember", params={"overlay_id": overlay_id, "peer_id": peer_id}
            )
        except Exception as exc:
            raise HomsError(f"cannot read member {peer_id!r} of {overlay_id!r}: {exc}") from None
        if response.status_code == 404:
            try:
                where = msgspec.json.decode(response.content).get("field")
            except (msgspec.DecodeError, AttributeError):
                where = None
            if where == "?peer_id":
                return None  # not a member
            raise HomsError(
                f"the HOMS has no overlay {overlay_id!r} (or no /api/OverlayMember: an older "
                "HOMS; upgrade it)",
                404,
            )
        if response.status_code != 200:
            raise HomsError(
                f"the HOMS refused to show member {peer_id!r} ({response.status_code})",
                response.status_code,
            )
        member: Any = msgspec.json.decode(response.content)
        address = member.get("address") if isinstance(member, dict) else None
        return address if isinstance(address, str) else None
