"""A headless Chromium driven over the Chrome DevTools Protocol (CDP), for page tests.

Just enough of CDP for the tests: open a page, evaluate JavaScript, take a screenshot. The
browser is Debian's ``chromium`` (``make media-deps``); tests skip, saying so, without it.
Its DevTools endpoint listens on a free loopback port that Chromium writes to
``DevToolsActivePort`` in its profile directory; every wait has a deadline.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

__all__ = ["Chromium", "chromium_path"]


def chromium_path() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _launch(args: list[str], err_path: Path) -> subprocess.Popen[bytes]:
    with err_path.open("wb") as err:
        return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=err)


class Chromium:
    """``async with Chromium(profile) as browser: page = await browser.open(url)``."""

    def __init__(self, profile: Path) -> None:
        self.profile = profile
        self.proc: subprocess.Popen[bytes] | None = None
        self.ws: ClientConnection | None = None
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Chromium:
        binary = chromium_path()
        assert binary is not None, "no chromium"
        self.profile.mkdir(parents=True, exist_ok=True)
        args = [binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--mute-audio"]
        args += ["--autoplay-policy=no-user-gesture-required", "--no-first-run"]
        args += ["--disable-background-networking", "--disable-extensions"]
        args += [f"--user-data-dir={self.profile}", "--remote-debugging-port=0", "about:blank"]
        self.proc = _launch(args, self.profile / "chromium.err")
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not port_file.is_file() or len(port_file.read_text().split()) < 2:  # bounded
            assert time.monotonic() < deadline, (self.profile / "chromium.err").read_text()[-2000:]
            assert self.proc.poll() is None, (self.profile / "chromium.err").read_text()[-2000:]
            await asyncio.sleep(0.1)
        port, path = port_file.read_text().split()[:2]
        self.ws = await connect(f"ws://127.0.0.1:{port}{path}", max_size=64 * 1024 * 1024)
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(BaseException):
                await self._reader
        if self.ws is not None:
            await self.ws.close()
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    async def _read(self) -> None:
        assert self.ws is not None
        async for raw in self.ws:  # ends with the connection
            message = json.loads(raw)
            future = self._waiting.pop(message.get("id", -1), None)
            if future is not None and not future.done():
                future.set_result(message)

    async def send(
        self, method: str, params: dict[str, Any] | None = None, session: str | None = None
    ) -> dict[str, Any]:
        assert self.ws is not None
        ident = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[ident] = future
        message: dict[str, Any] = {"id": ident, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        await self.ws.send(json.dumps(message))
        answer = await asyncio.wait_for(future, 30)
        assert "error" not in answer, (method, answer["error"])
        result: dict[str, Any] = answer.get("result", {})
        return result

    async def open(self, url: str) -> Page:
        target = await self.send("Target.createTarget", {"url": url})
        attached = await self.send(
            "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}
        )
        return Page(self, attached["sessionId"])


class Page:
    def __init__(self, browser: Chromium, session: str) -> None:
        self.browser = browser
        self.session = session

    async def evaluate(self, expression: str) -> Any:
        result = await self.browser.send(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
            self.session,
        )
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    async def screenshot(self) -> bytes:
        shot = await self.browser.send("Page.captureScreenshot", {"format": "png"}, self.session)
        return base64.b64decode(shot["data"])
