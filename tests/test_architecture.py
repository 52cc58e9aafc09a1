"""The package's shape, as docs/architecture.md states it: the module table lists every module with exactly the
modules of ours it imports; the top level keeps only entry points and shared leaves; no function is longer than
a screen; importing the package changes no environment variable."""

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "audiocap_jax"
MAX_TOP_LEVEL_MODULES = 14
MAX_FUNCTION_LINES = 80
# Exempt from the length rule: generators of data (the demo's procedural scenes) and the tests' fixtures.
LONG_FUNCTIONS_ALLOWED = ("audiocap_jax/data/synthetic.py", "audiocap_jax/testing/")
ROW = re.compile(r"^\| `(?P<module>[\w/]+\.py)` \| (?P<job>.+?) \| (?P<imports>.*?) \|$")


def _module_name(path: Path) -> str:
    """audiocap_jax/decoding/search.py -> "decoding/search" (the table's spelling)."""
    return path.relative_to(PACKAGE).with_suffix("").as_posix()


def _modules() -> dict[str, Path]:
    return {
        _module_name(path): path
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.name != "__init__.py" and "testing" not in path.parts
    }


def _our_imports(path: Path, known: set[str]) -> set[str]:
    """The modules of ours `path` imports anywhere in its body (lazily imported ones included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("audiocap_jax"):
            base = node.module.removeprefix("audiocap_jax").lstrip(".").replace(".", "/")
            for alias in node.names:
                candidate = f"{base}/{alias.name}".lstrip("/")
                found.add(candidate if candidate in known else base)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("audiocap_jax."):
                    found.add(alias.name.removeprefix("audiocap_jax.").replace(".", "/"))
    return {name for name in found if name in known} - {_module_name(path)}


def _table() -> dict[str, set[str]]:
    rows = {}
    for line in (REPO / "docs" / "architecture.md").read_text().splitlines():
        match = ROW.match(line)
        if match:
            imports = re.findall(r"`([\w/]+)`", match["imports"])
            rows[match["module"].removesuffix(".py")] = set(imports)
    return rows


def test_architecture_table_lists_every_module_with_its_imports():
    modules, table = _modules(), _table()
    assert sorted(table) == sorted(modules), "docs/architecture.md's table and the package's modules differ"
    wrong = {
        name: {"table": sorted(table[name]), "code": sorted(_our_imports(path, set(modules)))}
        for name, path in modules.items()
        if table[name] != _our_imports(path, set(modules))
    }
    assert not wrong, f"imports column out of date: {wrong}"


def test_top_level_keeps_only_entry_points_and_shared_leaves():
    top = sorted(path.name for path in PACKAGE.glob("*.py"))
    assert len(top) <= MAX_TOP_LEVEL_MODULES, top


def test_no_function_longer_than_a_screen():
    long = []
    for path in sorted(PACKAGE.rglob("*.py")) + sorted((REPO / "benchmarks").glob("*.py")):
        relative = path.relative_to(REPO).as_posix()
        if relative.startswith(LONG_FUNCTIONS_ALLOWED):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{relative}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, long


def test_importing_the_package_changes_no_environment_variable():
    """Device counts and compiler flags are set where a process starts, never by an import."""
    names = [
        "audiocap_jax." + _module_name(path).replace("/", ".")
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.name not in ("__init__.py", "__main__.py") and "testing" not in path.parts
    ]
    script = (
        "import json, os, sys, jax, flax, tensorflow_datasets, grain\n"
        "before = dict(os.environ)\n"
        "for name in sys.argv[1:]:\n"
        "    __import__(name)\n"
        "print(json.dumps({k: v for k, v in os.environ.items() if before.get(k) != v}))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    result = subprocess.run(
        [sys.executable, "-c", script, *names],
        cwd=REPO,
        env=dict(env, PYTHONPATH=str(REPO)),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "{}"
