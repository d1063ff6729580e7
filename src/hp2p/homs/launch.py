"""Start a ``hp2p homs`` child process and learn where it serves.

The one HOMS launcher of the tests, the benchmarks and the demo. ``hp2p homs`` prints one
line, ``hp2p homs: serving URL (database …)``, once uvicorn listens (:mod:`hp2p.homs.cli`).
The launcher waits for that line, with a deadline, instead of polling the port, so it also
learns the real port of ``--port 0`` and the scheme (``https`` with ``--tls-cert``).

A thread copies the process's stdout to ``WORKDIR/NAME.out`` (the serving line first), so the
pipe never fills; stderr goes to ``WORKDIR/NAME.err``. The process runs in ``WORKDIR``, where a
relative ``sqlite:///FILE.db`` lands. Only the standard library is imported here: a program
that starts a HOMS does not load the HOMS.
"""

from __future__ import annotations

import contextlib
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

DEADLINE_S = 60.0
_SERVING = "hp2p homs: serving "


class HomsStartError(RuntimeError):
    """The HOMS exited or stayed silent at start; the message has its stderr."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listened on a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _claim_name(workdir: Path, name: str) -> Path:
    """``WORKDIR/NAME.err``, or ``NAME-2.err`` … when an earlier HOMS used the name."""
    for n in range(1, 10_000):
        path = workdir / (f"{name}.err" if n == 1 else f"{name}-{n}.err")
        try:
            path.touch(exist_ok=False)
        except FileExistsError:
            continue
        return path
    raise HomsStartError(f"no free log name for {name!r} in {workdir}")


class HomsProcess:
    """One ``hp2p homs`` child process; :meth:`wait_ready` waits for its serving line.

    ``database`` defaults to a fresh SQLite file in ``workdir``; ``extra`` are more
    ``hp2p homs`` options. ``port=0`` lets the system choose (see :attr:`port` once ready).
    ``prefix`` is a command the HOMS runs under (``ip netns exec NS …`` in the NAT tests).
    """

    def __init__(
        self,
        workdir: Path,
        database: str | None = None,
        *extra: str,
        port: int = 0,
        log_level: str = "warning",
        name: str = "homs",
        prefix: Sequence[str] = (),
    ) -> None:
        self.workdir = workdir
        self.stderr_path = _claim_name(workdir, name)
        self.stdout_path = self.stderr_path.with_suffix(".out")
        self.database = database or f"sqlite:///{self.stderr_path.with_suffix('.db')}"
        self.port = port
        self.url = ""
        self.banner = ""  # the serving line, once ready
        self.operator_token: str | None = None  # monitors present it (secure profile)
        self.ready_s: float | None = None  # seconds from spawning to the serving line
        # ``prefix`` runs it through another command, e.g. ``ip netns exec NS env PYTHONPATH=…``
        args = [*prefix, sys.executable, "-m", "hp2p", "homs", "--port", str(port)]
        args += ["--database", self.database, "--log-level", log_level, *extra]
        self._spawned = time.monotonic()
        with self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(
                args,
                cwd=workdir,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
            )
        self._serving: queue.Queue[str] = queue.Queue(maxsize=1)
        assert self.proc.stdout is not None
        threading.Thread(
            target=self._copy_stdout, args=(self.proc.stdout,), daemon=True, name=f"{name}-out"
        ).start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _copy_stdout(self, stdout: IO[str]) -> None:
        announced = False
        with self.stdout_path.open("w") as out:
            for line in stdout:
                out.write(line)
                out.flush()
                if not announced and line.startswith(_SERVING):
                    announced = True
                    self._serving.put(line.rstrip("\n"))
        if not announced:
            self._serving.put("")  # it ended without serving

    def wait_ready(self, deadline: float = DEADLINE_S) -> HomsProcess:
        """Wait for the serving line; stop the process and raise if it does not come."""
        if self.banner:
            return self
        try:
            line = self._serving.get(timeout=deadline)
        except queue.Empty:
            line = None
        if not line:
            self.stop()
            why = "exited at start" if line == "" else f"did not serve within {deadline:g} s"
            raise HomsStartError(f"hp2p homs {why}: {self.stderr_tail() or '(no stderr)'}")
        self.ready_s = time.monotonic() - self._spawned
        self.banner = line
        self.url = line[len(_SERVING) :].split()[0]
        # "…, operator token TOKEN in FILE)" in the secure signalling profile
        words = line.split()
        if "token" in words and words.index("token") + 1 < len(words):
            self.operator_token = words[words.index("token") + 1]
        self.port = int(self.url.rsplit(":", 1)[1])
        return self

    def stderr_tail(self, chars: int = 2000) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")[-chars:].strip()
        except OSError:
            return ""

    def kill9(self) -> None:
        """SIGKILL, as a crash would end it; waits until it is gone."""
        self.proc.kill()
        self.proc.wait(timeout=10)

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM (a clean shutdown), then SIGKILL after ``grace`` seconds."""
        if self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=grace)

    def __enter__(self) -> HomsProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start_homs(
    workdir: Path,
    database: str | None = None,
    *extra: str,
    deadline: float = DEADLINE_S,
    port: int = 0,
    log_level: str = "warning",
) -> HomsProcess:
    """A HOMS that serves (see :class:`HomsProcess`); the caller stops it."""
    homs = HomsProcess(workdir, database, *extra, port=port, log_level=log_level)
    return homs.wait_ready(deadline)


@contextlib.contextmanager
def running_homs(
    workdir: Path, database: str | None = None, *extra: str, deadline: float = DEADLINE_S
) -> Iterator[HomsProcess]:
    """A HOMS that serves for the ``with`` block, stopped after it."""
    with start_homs(workdir, database, *extra, deadline=deadline) as homs:
        yield homs
