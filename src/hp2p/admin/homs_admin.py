"""The HOMS calls behind ``hp2p overlay``: HOMP query/modify/remove and the monitoring views.

Blocking (one request at a time is all a command line needs). Every failure is an
:class:`AdminError` whose text is one line saying what went wrong and what to do; ``refused``
tells a refusal by the HOMS (wrong key, unknown overlay: exit status 1) from a usage error.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import msgspec

#: The longest answer read from a HOMS (a list of many overlays, or a large overlay's status).
MAX_ANSWER = 32 * 1024 * 1024


class AdminError(Exception):
    """One line for the user; ``status`` the exit status (1 refusal/unreachable, 2 usage)."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Credentials:
    """What may open a closed overlay's views: the operator token, or the overlay's admin key."""

    operator_token: str | None = None
    admin_key: str | None = None

    def headers(self) -> dict[str, str]:
        if self.operator_token:
            return {"Authorization": f"Bearer {self.operator_token}"}
        if self.admin_key:
            return {"X-HOMS-Admin-Key": self.admin_key}
        return {}


def created_text(stamp: Any) -> str:
    """An overlay's creation time for a table (UTC), ``-`` when the HOMS does not tell."""
    if isinstance(stamp, int | float) and not isinstance(stamp, bool):
        return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(stamp))
    return "-"


class HomsAdmin:
    """One HOMS, for the ``hp2p overlay`` commands."""

    def __init__(self, url: str, *, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> HomsAdmin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(
        self,
        method: str,
        path: str,
        *,
        what: str,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, Any]:
        """(status, decoded JSON) of one request; unreachable or non-JSON is an AdminError."""
        try:
            answer = self._http.request(
                method,
                path,
                params=params,
                content=None if body is None else msgspec.json.encode(body),
                headers={"Content-Type": "application/json", **(headers or {})},
            )
        except httpx.HTTPError as exc:
            raise AdminError(
                f"cannot {what}: the HOMS at {self.url} does not answer ({exc or type(exc)}); "
                "is it running, and is --homs right?"
            ) from None
        if len(answer.content) > MAX_ANSWER:
            raise AdminError(f"cannot {what}: the HOMS answered more than {MAX_ANSWER} bytes")
        try:
            data = msgspec.json.decode(answer.content) if answer.content else None
        except msgspec.DecodeError:
            raise AdminError(
                f"cannot {what}: {self.url} answered {answer.status_code} with something that "
                "is not JSON; is --homs the HOMS's address?"
            ) from None
        return answer.status_code, data

    def _refused(self, status: int, data: Any, what: str) -> AdminError:
        reason = data.get("error") if isinstance(data, dict) else None
        return AdminError(f"cannot {what}: the HOMS answered {status}: {reason or data}")

    def overlays(self) -> list[dict[str, Any]]:
        """Every overlay: ``/api/OverlayList`` (hp2p), else ``GET /homs`` (any HOMP HOMS)."""
        status, data = self._call("GET", "/api/OverlayList", what="list the overlays")
        if status == 200 and isinstance(data, dict) and isinstance(data.get("overlays"), list):
            return [o for o in data["overlays"] if isinstance(o, dict)]
        status, data = self._call("GET", "/homs", what="list the overlays")
        if status != 200 or not isinstance(data, list):
            raise self._refused(status, data, "list the overlays")
        out = []
        for item in data:
            o = item.get("overlay") if isinstance(item, dict) else None
            if isinstance(o, dict):
                peers = (o.get("status") or {}).get("num_peers")
                out.append({**o, "num_peers": peers, "created": None})
        return out

    def resolve(self, key: str) -> dict[str, Any]:
        """The overlay whose id is ``key``, else the only one titled exactly ``key``."""
        overlays = self.overlays()
        for o in overlays:
            if o.get("overlay-id") == key:
                return o
        titled = [o for o in overlays if o.get("title") == key]
        if len(titled) == 1:
            return titled[0]
        if not titled:
            raise AdminError(
                f"no overlay with id or title {key!r} on {self.url} (`hp2p overlay list` shows "
                "them)"
            )
        ids = ", ".join(str(o.get("overlay-id")) for o in titled[:10])
        raise AdminError(
            f"{len(titled)} overlays are titled {key!r} ({ids}); name the one you mean by its "
            "overlay-id"
        )

    def status(self, overlay_id: str, credentials: Credentials) -> dict[str, Any]:
        """``/api/OverlayStatus``: the overlay, its members and sub-overlays."""
        what = f"show overlay {overlay_id}"
        status, data = self._call(
            "GET",
            "/api/OverlayStatus",
            params={"overlay_id": overlay_id},
            headers=credentials.headers(),
            what=what,
        )
        if status == 403:
            raise AdminError(
                f"cannot {what}: it is closed; give --operator-token (or $HP2P_OPERATOR_TOKEN) "
                "or its --admin-key"
            )
        if status != 200 or not isinstance(data, dict):
            raise self._refused(status, data, what)
        return data

    def remove(self, overlay_id: str, owner_id: str, admin_key: str) -> None:
        """HybridOverlayRemoval (``DELETE /homs``) with the owner-id and the admin key."""
        body = {
            "overlay": {
                "overlay-id": overlay_id,
                "owner-id": owner_id,
                "auth": {"admin_key": admin_key},
            }
        }
        status, data = self._call("DELETE", "/homs", body=body, what=f"remove {overlay_id}")
        if status != 200:
            raise self._refused(status, data, f"remove {overlay_id}")

    def modify(self, body: dict[str, Any]) -> dict[str, Any]:
        """HybridOverlayModification (``PUT /homs``); the HOMS's answer."""
        oid = body["overlay"]["overlay-id"]
        status, data = self._call("PUT", "/homs", body=body, what=f"modify {oid}")
        if status != 200 or not isinstance(data, dict):
            raise self._refused(status, data, f"modify {oid}")
        return data
