"""The import layers of the package ([tool.importlinter] in pyproject.toml): `lint-imports`
keeps both contracts (layers; no cycles between the modules of a package) on this tree, and
breaks them when an import back up the layers or a cycle is planted in a copy of it."""
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

pytest.importorskip("importlinter", reason="import-linter is not installed (the [test] extra: "
                    "pip install import-linter)")


def lint_imports(root):
    """Run lint-imports (this interpreter's import-linter, no cache) on the package
    `root`/transformer with `root`/pyproject.toml; returns the CompletedProcess."""
    env = dict(os.environ, PYTHONPATH=str(root))
    code = ("import sys; from importlinter.cli import lint_imports_command; "
            "sys.exit(lint_imports_command())")
    return subprocess.run([sys.executable, "-c", code, "--no-cache", "--no-logo"], cwd=root,
                          env=env, capture_output=True, text=True, timeout=300)


def test_the_package_keeps_its_layers():
    p = lint_imports(ROOT)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "Contracts: 2 kept, 0 broken." in p.stdout, p.stdout


def test_a_planted_import_back_up_the_layers_or_cycle_breaks_the_contracts(tmp_path):
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    shutil.copytree(ROOT / "transformer", tmp_path / "transformer",
                    ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    with open(tmp_path / "transformer" / "_io.py", "a") as f:
        f.write("\nfrom .models import family_for  # noqa: planted, back up the layers\n")
    with open(tmp_path / "transformer" / "tokenizer" / "checks.py", "a") as f:
        f.write("\nfrom .hf import Tokenizer  # noqa: planted, hf imports checks: a cycle\n")
    p = lint_imports(tmp_path)
    assert p.returncode != 0
    assert "transformer._io is not allowed to import transformer.models" in p.stdout, p.stdout
    assert "No cycles are allowed in transformer.tokenizer" in p.stdout, p.stdout
