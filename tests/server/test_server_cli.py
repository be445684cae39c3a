"""`transformer serve` on the command line: its options, and the message naming the `server`
extra when its packages are missing (the core package does not need them)."""
import subprocess
import sys

import pytest

from transformer import cli, server


def test_serve_names_the_extra_when_packages_are_missing(monkeypatch):
    monkeypatch.setattr(server, "missing_packages", lambda: ["uvicorn"])
    with pytest.raises(SystemExit) as e:
        cli.main(["serve", "--model", "some-dir"])
    assert "transformer[server]" in str(e.value) and "uvicorn" in str(e.value)


def test_serve_help_lists_the_engine_options():
    out = subprocess.run([sys.executable, "-m", "transformer", "serve", "--help"],
                         capture_output=True, text=True, check=True).stdout
    for option in ("--host", "--port", "--dtype", "--threads", "--api-key", "--max-queue",
                   "--kv-budget-tokens", "--max-batch-tokens", "--served-model-name",
                   "--shutdown-timeout"):
        assert option in out


def test_core_import_does_not_load_the_server_stack():
    code = ("import sys, transformer, transformer.cli, transformer.server; "
            "print(sorted(m for m in ('starlette', 'uvicorn', 'prometheus_client') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"
