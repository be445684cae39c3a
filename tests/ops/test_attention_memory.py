"""Attention memory is linear in the sequence length (DESIGN.md: flash-style tiling).

ops.attention works through blocks of queries x blocks of keys with an online softmax, so one call
holds O(block) scratch besides its (B, H, T, D) output, where a naive attention materialises the
(B, H, T, S) score matrix. Each size runs in a fresh Python process (the peak resident size of a
process only grows); the peak is Linux's VmHWM, reset to the current RSS through
/proc/self/clear_refs just before the call, so the C kernels' malloc'd blocks count (tracemalloc
would not see them). Memory is not speed: these bounds may be asserted.
"""
import json
import os
import subprocess
import sys

import pytest

B, H, D = 1, 8, 64

PROBE = r"""
import gc, json, sys
import numpy as np
from transformer import ops

def kib(field):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith(field + ":"))

T, naive = int(sys.argv[1]), sys.argv[2] == "naive"
rng = np.random.default_rng(T)
q, k, v = (rng.standard_normal((%d, %d, T, %d), dtype=np.float32) for _ in range(3))

def run(q, k, v):
    if not naive:
        return ops.attention(q, k, v, threads=1)
    s = q @ k.swapaxes(-1, -2)
    s -= s.max(-1, keepdims=True)
    np.exp(s, out=s)
    return (s / s.sum(-1, keepdims=True)) @ v

run(q[:, :, :64], k[:, :, :64], v[:, :, :64])   # pools, BLAS buffers and code pages first
gc.collect()
out = np.empty_like(q)                           # the output, counted before the peak is reset
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
before = kib("VmRSS")
out[...] = run(q, k, v)
print(json.dumps({"peak_bytes": (kib("VmHWM") - before) * 1024}))
""" % (B, H, D)


def peak_bytes(T, naive=False):
    """The peak resident growth of one attention call at sequence length T, in bytes."""
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", PROBE, str(T), "naive" if naive else "ours"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["peak_bytes"]


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"),
                    reason="needs Linux's /proc/self/clear_refs to reset the peak RSS")
def test_attention_memory_is_linear_in_sequence_length():
    output = lambda T: B * H * T * D * 4                 # noqa: E731 - the (B, H, T, D) result
    scores = lambda T: B * H * T * T * 4                 # noqa: E731 - the naive score matrix
    ours = {T: peak_bytes(T) for T in (1024, 4096)}
    naive = peak_bytes(1024, naive=True)
    # the probe sees a naive attention's score matrix, so it would see ours if it were built
    assert naive >= scores(1024)
    # ours: one output's worth of temporaries at most (the array ops.attention returns, copied
    # into `out`) plus a few MiB of tiles and page-granular noise; the 4096 score matrix is 512 MiB
    for T, peak in ours.items():
        assert peak <= 2 * output(T) + 8 * 2**20, (T, peak, scores(T))
    # linear: 4x the length costs at most ~4x (quadratic would be 16x)
    assert ours[4096] <= 5 * max(ours[1024], output(1024)), ours
