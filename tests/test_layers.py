"""The package's shape (issue 14): layers checked by import-linter, no cycles through
function-level imports, short functions.

The layers contract is ``[tool.importlinter]`` in pyproject.toml (see
CONTRIBUTING.md): a module imports only from its own layer or below, and the
architecture packages never import each other (except :mod:`physllm.gpt`).
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO

PACKAGE = REPO / "physllm"
MAX_FUNCTION_LINES = 80


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` on the package under ``root`` (its pyproject.toml, its physllm/)."""
    script = Path(sys.executable).parent / "lint-imports"
    command = [str(script)] if script.exists() else [shutil.which("lint-imports") or "lint-imports"]
    return subprocess.run(
        [*command, "--no-cache"],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},  # analyse this copy, not the installed one
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_layers_contract_is_kept():
    proc = lint_imports(REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 kept, 0 broken" in proc.stdout


@pytest.fixture(scope="module")
def package_copy(tmp_path_factory) -> Path:
    """The package and its pyproject.toml, copied so a test can break them."""
    root = tmp_path_factory.mktemp("copy")
    shutil.copy(REPO / "pyproject.toml", root / "pyproject.toml")
    shutil.copytree(PACKAGE, root / "physllm", ignore=shutil.ignore_patterns("__pycache__"))
    return root


@pytest.mark.parametrize(
    ("module", "line", "violation"),
    [
        # a building block reaching up to the command line
        ("nn.py", "import physllm.cli", "physllm.nn is not allowed to import physllm.cli"),
        # even inside a function (the way the old cycles hid)
        (
            "sampling.py",
            "def _f():\n    from physllm.training import train\n",
            "physllm.sampling is not allowed to import physllm.training",
        ),
        # one architecture importing another that is not gpt
        ("qllm/model.py", "import physllm.ngt", "is not allowed to import physllm.ngt"),
    ],
)
def test_the_contract_fails_on_an_upward_import(package_copy, tmp_path, module, line, violation):
    root = tmp_path / "pkg"
    shutil.copytree(package_copy, root)
    target = root / "physllm" / module
    target.write_text(target.read_text() + "\n" + line + "\n")
    proc = lint_imports(root)
    assert proc.returncode != 0, proc.stdout
    assert violation in " ".join(proc.stdout.split()), proc.stdout


def _sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _functions(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def test_no_function_is_over_80_lines():
    """Counted from the def line to the last line (decorators not counted)."""
    long = []
    for path in _sources():
        for fn in _functions(ast.parse(path.read_text(), str(path))):
            n = fn.end_lineno - fn.lineno + 1
            if n > MAX_FUNCTION_LINES:
                long.append(f"{path.relative_to(REPO)}:{fn.lineno} {fn.name} ({n} lines)")
    assert not long, "functions over 80 lines:\n" + "\n".join(long)


def test_no_function_level_imports_of_physllm():
    """Imports of physllm modules sit at the top of a module, where the layers see them;
    one that needs to hide inside a function is in the wrong layer."""
    found: dict[str, str] = {}  # where -> the function (the outermost, for nested ones)
    for path in _sources():
        for fn in _functions(ast.parse(path.read_text(), str(path))):
            for node in ast.walk(fn):
                names = []
                if isinstance(node, ast.ImportFrom) and node.level == 0:
                    names = [node.module or ""]
                elif isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                if any(n == "physllm" or n.startswith("physllm.") for n in names):
                    found.setdefault(f"{path.relative_to(REPO)}:{node.lineno}", fn.name)
    lines = [f"{where} in {name}" for where, name in sorted(found.items())]
    assert not found, "function-level physllm imports:\n" + "\n".join(lines)
