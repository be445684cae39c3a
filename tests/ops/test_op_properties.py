"""Runs the hypothesis properties of every op front (tests/ops/hypothesis_ops.py) in a child
process: a crash there (segfault, SIGFPE) fails this test with the child's output instead of
killing pytest. 100 derandomized examples per op."""
import os
import pathlib
import subprocess
import sys

import pytest

HERE = pathlib.Path(__file__).resolve().parent


def test_op_properties_in_a_subprocess():
    pytest.importorskip("hypothesis")
    env = dict(os.environ, TRANSFORMER_HYPOTHESIS_N="100", PYTHONFAULTHANDLER="1",
               PYTHONPATH=os.pathsep.join([str(HERE.parents[1])] + sys.path))
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           str(HERE / "hypothesis_ops.py")], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, (f"exit status {proc.returncode}\n" + proc.stdout[-8000:]
                                  + proc.stderr[-4000:])
