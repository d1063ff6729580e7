"""A headless Chromium driven over the Chrome DevTools Protocol, for the dashboard tests.

No browser-automation dependency: Debian's ``chromium`` runs with ``--remote-debugging-port=0``,
writes the port it chose to ``DevToolsActivePort`` in its profile directory, and a page is
driven with three CDP methods over the ``websockets`` package hp2p already depends on
(``Page.navigate``, ``Runtime.evaluate``, ``Page.captureScreenshot``). Every wait has a
deadline; :meth:`Browser.wait_for` polls a JavaScript condition instead of sleeping.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
from websockets.sync.client import ClientConnection, connect

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


def find_chromium() -> str | None:
    """The browser binary (``HP2P_CHROMIUM`` overrides the search), or None."""
    given = os.environ.get("HP2P_CHROMIUM")
    if given:
        return given
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


class BrowserError(AssertionError):
    """The browser did not start, or a page call failed or timed out."""


class Browser:
    """One headless Chromium with one page; use as a context manager (it is killed after)."""

    def __init__(
        self, binary: str, width: int = 1400, height: int = 900, extra: tuple[str, ...] = ()
    ) -> None:
        self.profile = Path(tempfile.mkdtemp(prefix="hp2p-chromium-"))
        args = [binary, "--headless=new", "--remote-debugging-port=0", "--disable-gpu"]
        args += [f"--user-data-dir={self.profile}", "--no-first-run", "--no-default-browser-check"]
        args += ["--disable-extensions", "--disable-background-networking"]
        args += ["--disable-dev-shm-usage", f"--window-size={width},{height}"]
        if os.geteuid() == 0:
            args.append("--no-sandbox")  # Chromium refuses to run as root with its sandbox
        args += extra
        self.proc = subprocess.Popen(
            [*args, "about:blank"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=(self.profile / "stderr.log").open("wb"),
        )
        self._ids = itertools.count(1)
        self._stack = contextlib.ExitStack()
        self.page = self._open_page(width, height)

    def _open_page(self, width: int, height: int) -> ClientConnection:
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not port_file.exists() or not port_file.read_text().strip():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise BrowserError(f"chromium did not start: {self.stderr_tail()}")
            time.sleep(0.05)  # polling a file the browser writes once, with a deadline
        port = int(port_file.read_text().split()[0])
        targets = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=10).json()
        page = next(t for t in targets if t.get("type") == "page")
        conn = self._stack.enter_context(
            connect(page["webSocketDebuggerUrl"], max_size=64 * 2**20, open_timeout=10)
        )
        self.page = conn
        self.call(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=False,
        )
        return conn

    def stderr_tail(self) -> str:
        try:
            return (self.profile / "stderr.log").read_text(errors="replace")[-1500:]
        except OSError:
            return ""

    def call(self, method: str, timeout: float = 30.0, **params: Any) -> dict[str, Any]:
        """One CDP command on the page; its result (events read meanwhile are dropped)."""
        ident = next(self._ids)
        self.page.send(json.dumps({"id": ident, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrowserError(f"{method}: no answer within {timeout:g} s")
            message = json.loads(self.page.recv(timeout=left))
            if message.get("id") != ident:
                continue
            if "error" in message:
                raise BrowserError(f"{method}: {message['error']}")
            result: dict[str, Any] = message.get("result", {})
            return result

    def navigate(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def evaluate(self, expression: str) -> Any:
        """The JSON value of ``expression`` in the page (promises awaited)."""
        result = self.call(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, deadline: float, what: str) -> Any:
        """Poll ``expression`` until it is truthy; fail after ``deadline`` seconds."""
        end = time.monotonic() + deadline
        value: Any = None
        while time.monotonic() < end:
            try:
                value = self.evaluate(expression)
            except BrowserError:
                value = None  # the page is (re)loading
            if value:
                return value
            time.sleep(0.1)  # a bounded poll of the page, not a synchronisation sleep
        raise BrowserError(f"timed out after {deadline:g} s waiting for {what}; last: {value!r}")

    def screenshot(self, path: Path) -> None:
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        self._stack.close()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> Browser:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
