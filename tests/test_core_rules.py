"""The sans-IO rule, checked: no core module does I/O, sleeps, or reads a clock.

Everything that decides runs as a real daemon, as thousands of simulated peers and under
hypothesis state machines only because the core takes time as an argument and asks its shell
for every side effect. One ``import time`` in a core module would quietly break the simulator's
determinism, so the rule is a test, not a convention.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import hp2p.peer

PEER = Path(hp2p.peer.__file__).parent

#: The sans-IO modules: the kernel, both cores, their FE procedures and pure policies.
CORE_MODULES = (
    "kernel",
    "admission",
    "core",
    "control",
    "path_procedures",
    "paths",
    "probe",
    "broadcast",
    "cache",
    "recovery",
    "scan",
    "timers",
    "effects",
    "config",
    "errors",
    "subtree",
    "mesh",
    "mesh_links",
    "mesh_holdings",
    "mesh_pull",
    "mesh_objects",
    "mesh_config",
    "mesh_trust",
)

FORBIDDEN_IMPORTS = {
    "asyncio",
    "socket",
    "ssl",
    "httpx",
    "time",
    "os",
    "selectors",
    "threading",
    "subprocess",
    "datetime",
}
#: Calls that read a clock or the global random state, whatever module they come through.
FORBIDDEN_CALLS = {
    "time",
    "monotonic",
    "monotonic_ns",
    "perf_counter",
    "perf_counter_ns",
    "time_ns",
    "now",
    "utcnow",
    "sleep",
    "get_running_loop",
    "get_event_loop",
}


def _tree(name: str) -> ast.Module:
    return ast.parse((PEER / f"{name}.py").read_text(), filename=f"{name}.py")


def violations(tree: ast.Module) -> list[str]:
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [
                f"line {node.lineno}: import {a.name}"
                for a in node.names
                if a.name.split(".")[0] in FORBIDDEN_IMPORTS
            ]
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module.split(".")[0] in FORBIDDEN_IMPORTS:
                found.append(f"line {node.lineno}: from {node.module} import ...")
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            owner = func.value if isinstance(func, ast.Attribute) else None
            if name in FORBIDDEN_CALLS:
                found.append(f"line {node.lineno}: calls {name}()")
            elif isinstance(owner, ast.Name) and owner.id == "random":
                # random.random() etc.: the global generator; cores use an injected Random
                found.append(f"line {node.lineno}: calls random.{name}()")
    return found


@pytest.mark.parametrize("name", CORE_MODULES)
def test_core_module_does_no_io_and_reads_no_clock(name: str) -> None:
    assert violations(_tree(name)) == [], f"hp2p.peer.{name} breaks the sans-IO rule"


def test_every_peer_module_is_classified() -> None:
    """A new module in hp2p.peer must be put on one side of the rule, not forgotten."""
    shells = {
        "__init__",
        "admin_keys",
        "api",
        "api_guard",
        "cli",
        "create_guard",
        "daemon",
        "homs_client",
        "local_api",
        "mesh_node",
        "metrics",
        "mesh_store",
        "node",
        "settings",
        "shell",
        "signalling_client",
        "stdio",
        "subscription",
    }
    modules = {p.stem for p in PEER.glob("*.py")}
    unclassified = modules - set(CORE_MODULES) - shells
    assert unclassified == set(), f"classify these as core or shell in {__file__}"


@pytest.mark.parametrize(
    "source",
    [
        "import time",
        "import asyncio.tasks",
        "from os import path",
        "x = clock.monotonic()",
        "import random\nrandom.random()",
        "loop.time()",
    ],
)
def test_the_guard_catches_what_it_should(source: str) -> None:
    assert violations(ast.parse(source)) != []


def test_the_guard_lets_an_injected_rng_and_time_argument_pass() -> None:
    code = "def f(self, now: float) -> float:\n    return now + self.rng.random()\n"
    assert violations(ast.parse(code)) == []


def _sizes(kind: type[ast.AST]) -> list[tuple[str, int]]:
    """Lines of each class or function body: the signature and the docstring do not count.

    A command with thirty typed options, or a docstring that explains why, is not what makes
    code hard to follow; a long body is.
    """
    out: list[tuple[str, int]] = []
    for path in sorted(PEER.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, kind):
                continue
            body = list(getattr(node, "body", []))
            first = body[0] if body else None
            docstring = isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
            if len(body) > 1 and docstring:
                body = body[1:]
            size = (getattr(node, "end_lineno", 0) or 0) - body[0].lineno + 1
            out.append((f"{path.stem}.{getattr(node, 'name', '?')}", size))
    return out


def test_no_class_in_the_peer_package_grows_past_500_lines() -> None:
    """The procedures live in one object per FE; a class this long is a core growing back."""
    assert [(n, size) for n, size in _sizes(ast.ClassDef) if size > 500] == []


def test_no_function_in_the_peer_package_grows_past_60_lines() -> None:
    long = [
        (n, size)
        for kind in (ast.FunctionDef, ast.AsyncFunctionDef)
        for n, size in _sizes(kind)
        if size > 60
    ]
    assert long == []
