"""The README as a newcomer meets it: its shell blocks run as written, in order, and every link
inside the repository points at a file that exists.

How the ```sh blocks of README.md are run (one bash script, in a fresh folder, bounded):

* ``make …`` lines are skipped: this test runs inside ``make test``.
* ``hp2p homs`` lines are skipped: the test starts a throwaway HOMS on a free port, and
  ``127.0.0.1:8081`` (the default HOMS) and ``127.0.0.1:8700`` (the README's peer API) are
  rewritten to free ports in the extracted text, so a HOMS the user runs is never touched.
* A line ending in ``&`` runs in the background, as the README says; the next line runs once it
  has printed its first line (the README's "after its joined line"): its stdout, or the file
  it redirects to (``… > alice.log &``). Background commands are killed at the end.
* Every other line runs in the foreground and must exit 0.
* A block preceded by ``<!-- readme-test: skip (why) -->`` is not run (invisible on GitHub).

``.venv`` in the folder is the test's own virtual environment, so ``.venv/bin/hp2p`` works.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from hp2p.homs.launch import HomsProcess

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
SKIP_MARK = "<!-- readme-test: skip"
SCRIPT_TIMEOUT = 240.0  # the README's demo alone runs 20 s
_BACKGROUND = re.compile(r"^(?P<cmd>.*?[^&])&\s*(#.*)?$")
_REDIRECT = re.compile(r">\s*(?P<file>[^\s>&|]+)\s*$")
_LINK = re.compile(r"\]\((?P<target>[^)\s]+)\)")

_PRELUDE = """\
wait_output() {  # bounded: up to 60 s for the first line of a background command
    for _ in $(seq 600); do [ -s "$1" ] && return 0; sleep 0.1; done
    echo "README test: $1 stayed empty for 60 s" >&2; return 1
}
"""


def shell_blocks(markdown: str) -> Iterator[list[str]]:
    """The ```sh blocks to run, in order (blocks after a skip mark are left out)."""
    lines = markdown.splitlines()
    previous = ""
    i = 0
    while i < len(lines):
        if lines[i].strip() == "```sh":
            end = lines.index("```", i + 1)
            if not previous.startswith(SKIP_MARK):
                yield lines[i + 1 : end]
            i, previous = end, "```"
        elif lines[i].strip():
            previous = lines[i].strip()
        i += 1


def script_for(blocks: list[list[str]], ports: dict[str, str]) -> str:
    """One bash script: foreground lines checked, background lines waited for (see above)."""
    out = [_PRELUDE]
    for number, line in enumerate((ln for block in blocks for ln in block), 1):
        text = line.strip()
        for old, new in ports.items():
            text = text.replace(old, new)
        if not text or text.startswith("#") or text.startswith("make "):
            continue
        if re.search(r"\bhp2p homs\b", text):
            continue
        background = _BACKGROUND.match(text)
        if background:
            command = background["cmd"].rstrip()
            redirect = _REDIRECT.search(command)
            if redirect:
                out.append(f"{command} &")
                watch = redirect["file"]
            else:
                watch = f".bg{number}.out"
                out.append(f"{command} > {watch} 2> .bg{number}.err &")
            out.append(f"wait_output {watch} || exit 1")
            continue
        out.append(text)
        quoted = shlex.quote(text)
        out.append(
            f'rc=$?; [ $rc -eq 0 ] || {{ echo "README failed (rc=$rc): "{quoted} >&2; exit 1; }}'
        )
    return "\n".join(out) + "\n"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_readme_shell_blocks_run_as_written(tmp_path: Path, homs: HomsProcess) -> None:
    blocks = list(shell_blocks(README.read_text()))
    assert len(blocks) >= 3
    homs_address = homs.url.removeprefix("http://").rstrip("/")
    ports = {"127.0.0.1:8081": homs_address, "127.0.0.1:8700": f"127.0.0.1:{_free_port()}"}
    work = tmp_path / "newcomer"
    work.mkdir()
    (work / ".venv").symlink_to(Path(sys.prefix))
    script = work / "readme.sh"
    script.write_text(script_for(blocks, ports))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p.endswith("src"))
    out_path, err_path = work / "readme.out", work / "readme.err"
    with out_path.open("w") as out, err_path.open("w") as err:  # files: background jobs keep them
        proc = subprocess.Popen(
            ["bash", str(script)],
            cwd=work,
            env=env,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
    try:
        proc.wait(timeout=SCRIPT_TIMEOUT)
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):  # the README's background commands
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
    err_text, out_text = err_path.read_text()[-3000:], out_path.read_text()[-2000:]
    assert proc.returncode == 0, f"{err_text}\n--- stdout\n{out_text}"


def test_script_conventions() -> None:
    blocks = [["make demo", "x &   # bg", "y > a.log &", "hp2p homs &", "z http://127.0.0.1:8081"]]
    script = script_for(blocks, {"127.0.0.1:8081": "127.0.0.1:9"})
    assert "make demo" not in script
    assert "hp2p homs" not in script
    assert "x > .bg2.out 2> .bg2.err &\nwait_output .bg2.out" in script
    assert "y > a.log &\nwait_output a.log" in script
    assert "z http://127.0.0.1:9\nrc=$?" in script
    skipped = list(shell_blocks("<!-- readme-test: skip (x) -->\n```sh\nno\n```\n```sh\nyes\n```"))
    assert skipped == [["yes"]]


@pytest.mark.parametrize(
    "page", [README, *sorted((ROOT / "docs").glob("*.md"))], ids=lambda p: p.name
)
def test_every_link_inside_the_repository_points_at_a_file(page: Path) -> None:
    missing = []
    for match in _LINK.finditer(page.read_text()):
        target = match["target"].split("#", 1)[0]
        if not target or re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http(s), mailto, …
            continue
        if not (page.parent / target).exists():
            missing.append(match["target"])
    assert not missing, f"{page.relative_to(ROOT)} links to missing files: {missing}"
