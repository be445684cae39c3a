"""GPU benchmark (issue 5): our CUDA kernels against PyTorch on the same GPU, in one run.

  python bench/gpu.py [--quick] [--output DIR]

1. Attention forward, fp16 and bf16, D = 64 and 128, T = 512..8192, causal and not: TFLOP/s
   (4 B H T^2 D flops, half when causal) and the ratio to torch's
   scaled_dot_product_attention on its FlashAttention backend, same inputs (shared through
   DLPack), outputs compared first.
2. Row kernels (layer_norm, rms_norm, softmax, bias + GELU): GB/s (bytes read + written) and the
   fraction of a device-to-device copy of the same bytes measured in the same run.
3. cuBLAS GEMM TFLOP/s through our gemm (the matmul limit) and end-to-end MiniLM-shaped and
   BERT-base-shaped encode (random weights) against HF transformers in PyTorch eager, fp16.
4. GPT-2-small-shaped greedy decode (12 layers, C=768, V=50257, random weights seeded), fp16:
   new tokens/s of model.generate (KV cache on the GPU, logits to the host each step) against
   HF generate in PyTorch eager on the same GPU, batch 1, 8 (and 32), 32-token prompts; the
   prompt logits are compared first, and the share of identical greedy tokens is reported
   (random weights give near ties, so fp16 runs may part ways).
Timing: CUDA events, median of repeats after warm-up. Needs CuPy, torch with CUDA, transformers.
Writes results.json and report.md to --output (default bench/results/gpu).
"""
import argparse
import json
import pathlib
import sys
import time

import numpy as np


def timed(fn, cp, repeats=20, warmup=3):
    """Median milliseconds of fn() measured with CUDA events."""
    for _ in range(warmup):
        fn()
    cp.cuda.Device().synchronize()
    times = []
    for _ in range(repeats):
        start, stop = cp.cuda.Event(), cp.cuda.Event()
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(cp.cuda.get_elapsed_time(start, stop))
    return float(np.median(times))


def bench_attention(cp, torch, ops, quick):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    rows = []
    lengths = [512, 2048] if quick else [512, 1024, 2048, 4096, 8192]
    for dtype in ("float16", "bfloat16"):
        tdt = getattr(torch, dtype)
        for D in (64, 128):
            for T in lengths:
                B, H = max(1, 16384 // T), 2048 // D
                for causal in (False, True):
                    q, k, v = (torch.randn(B, H, T, D, device="cuda", dtype=tdt)
                               for _ in range(3))
                    # ours reads bf16 as uint16 bits: view the same memory
                    view = (lambda t: cp.from_dlpack(t.view(torch.int16)).view(cp.uint16)) \
                        if dtype == "bfloat16" else cp.from_dlpack
                    qc, kc, vc = view(q), view(k), view(v)
                    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                        want = torch.nn.functional.scaled_dot_product_attention(
                            q, k, v, is_causal=causal)
                    got = ops.attention(qc, kc, vc, causal=causal)
                    from transformer.device import to_numpy
                    err = float(np.abs(to_numpy(got) - want.float().cpu().numpy()).max())
                    ms_ours = timed(lambda: ops.attention(qc, kc, vc, causal=causal), cp)
                    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                        ms_torch = timed(lambda: torch.nn.functional.scaled_dot_product_attention(
                            q, k, v, is_causal=causal), cp)
                    flops = 4 * B * H * T * T * D / (2 if causal else 1)
                    rows.append(dict(dtype=dtype, D=D, T=T, B=B, H=H, causal=causal,
                                     ours_tflops=flops / ms_ours / 1e9,
                                     torch_tflops=flops / ms_torch / 1e9,
                                     ratio=ms_torch / ms_ours, max_abs_diff=err))
                    print(f"attention {rows[-1]}", file=sys.stderr)
    return rows


def bench_rows(cp, ops):
    from transformer.ops import cuda
    rows = []
    N, C = 16384, 4096
    for dtype in ("float32", "float16"):
        x = cp.random.standard_normal((N, C), dtype=np.float32).astype(dtype)
        w = cp.ones(C, dtype)
        b = cp.zeros(C, dtype)
        nbytes = 2 * x.nbytes  # one read, one write
        dst = cp.empty_like(x)
        copy_ms = timed(lambda: dst.__setitem__(Ellipsis, x), cp)
        cases = {"layer_norm": lambda: ops.layer_norm(x, w, b),
                 "rms_norm": lambda: ops.rms_norm(x, w),
                 "softmax": lambda: ops.softmax(x),
                 "bias_gelu": lambda: cuda.bias_act(dst, b, "gelu", None)}
        for name, fn in cases.items():
            ms = timed(fn, cp)
            rows.append(dict(op=name, dtype=dtype, N=N, C=C, gbps=nbytes / ms / 1e6,
                             copy_gbps=nbytes / copy_ms / 1e6, fraction_of_copy=copy_ms / ms))
            print(f"rows {rows[-1]}", file=sys.stderr)
    return rows


def bench_gemm(cp):
    from transformer.ops import cuda
    n = 8192
    a = cp.random.standard_normal((n, n), dtype=np.float32).astype(np.float16)
    w = cp.random.standard_normal((n, n), dtype=np.float32).astype(np.float16)
    out = cp.empty((n, n), np.float16)
    ms = timed(lambda: cuda.gemm(a, w, out), cp, repeats=10)
    return dict(n=n, dtype="float16", tflops=2 * n ** 3 / ms / 1e9)


def bench_encode(cp, torch, quick):
    import tempfile
    import transformers as hf
    import transformer
    from transformer.device import to_numpy
    rows = []
    shapes = {"minilm-shaped": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                                    intermediate_size=1536),
              "bert-base-shaped": dict(hidden_size=768, num_hidden_layers=12,
                                       num_attention_heads=12, intermediate_size=3072)}
    for name, kw in shapes.items():
        with tempfile.TemporaryDirectory() as d:
            model = hf.BertModel(hf.BertConfig(vocab_size=30522, **kw)).eval()
            model.save_pretrained(d, safe_serialization=True)
            ours = transformer.load(d, device="cuda", dtype="float16")
        model = model.half().cuda()
        B, T = 64, 128
        ids = np.random.default_rng(0).integers(1000, 30000, (B, T))
        mask = np.ones((B, T), np.int64)
        tids, tmask = torch.tensor(ids).cuda(), torch.tensor(mask).cuda()
        with torch.no_grad():
            want = model(input_ids=tids, attention_mask=tmask).last_hidden_state.float()
        err = float(np.abs(to_numpy(ours(ids, mask)) - want.cpu().numpy()).max())
        ms_ours = timed(lambda: ours(ids, mask), cp, repeats=10)
        with torch.no_grad():
            ms_torch = timed(lambda: model(input_ids=tids, attention_mask=tmask), cp, repeats=10)
        rows.append(dict(model=name, B=B, T=T, dtype="float16",
                         ours_tokens_per_s=B * T / ms_ours * 1e3,
                         torch_tokens_per_s=B * T / ms_torch * 1e3, ratio=ms_torch / ms_ours,
                         max_abs_diff=err))
        print(f"encode {rows[-1]}", file=sys.stderr)
    return rows


def bench_decode(cp, torch, quick):
    import tempfile
    import transformers as hf
    import transformer
    from transformer.device import to_numpy
    rows = []
    torch.manual_seed(0)
    config = hf.GPT2Config(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12,
                           bos_token_id=None, eos_token_id=None)
    with tempfile.TemporaryDirectory() as d:
        model = hf.GPT2LMHeadModel(config).eval()
        model.save_pretrained(d, safe_serialization=True)
        ours = transformer.load(d, device="cuda", dtype="float16")
    model = model.half().cuda()
    T, new = 32, 32 if quick else 128
    for B in (1, 8) if quick else (1, 8, 32):
        ids = np.random.default_rng(B).integers(0, 50257, (B, T))
        tids = torch.tensor(ids).cuda()
        with torch.no_grad():
            want = model(tids).logits.float().cpu().numpy()
        err = float(np.abs(to_numpy(ours(ids)) - want).max())

        def run_ours():
            return ours.generate(ids, max_new_tokens=new, eos_token_id=[])

        def run_torch():
            with torch.no_grad():
                return model.generate(tids, attention_mask=torch.ones_like(tids),
                                      max_new_tokens=new, do_sample=False, pad_token_id=0)
        a, b = to_numpy(run_ours())[:, T:], run_torch().cpu().numpy()[:, T:]
        same = float((a == b).mean()) if a.shape == b.shape else 0.0
        ms_ours = timed(run_ours, cp, repeats=5, warmup=1)
        ms_torch = timed(run_torch, cp, repeats=5, warmup=1)
        rows.append(dict(model="gpt2-small-shaped", B=B, prompt=T, new_tokens=new,
                         dtype="float16", ours_tokens_per_s=B * new / ms_ours * 1e3,
                         torch_tokens_per_s=B * new / ms_torch * 1e3, ratio=ms_torch / ms_ours,
                         max_abs_diff=err, same_tokens=same))
        print(f"decode {rows[-1]}", file=sys.stderr)
    return rows


def report(results):
    lines = [f"# GPU benchmark ({results['device']})", "",
             "| attention | D | T | causal | ours TFLOP/s | torch flash TFLOP/s | ratio "
             "| max diff |",
             "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: |"]
    for r in results["attention"]:
        lines.append(f"| {r['dtype']} | {r['D']} | {r['T']} | {r['causal']} | "
                     f"{r['ours_tflops']:.1f} | {r['torch_tflops']:.1f} | {r['ratio']:.2f} | "
                     f"{r['max_abs_diff']:.1e} |")
    lines += ["", "| row kernel | dtype | GB/s | copy GB/s | fraction of copy |",
              "| --- | --- | ---: | ---: | ---: |"]
    for r in results["rows"]:
        lines.append(f"| {r['op']} | {r['dtype']} | {r['gbps']:.0f} | {r['copy_gbps']:.0f} | "
                     f"{r['fraction_of_copy']:.0%} |")
    lines += ["", f"cuBLAS fp16 GEMM {results['gemm']['n']}^3: {results['gemm']['tflops']:.0f} "
              "TFLOP/s", "", "| encode (fp16) | ours tokens/s | torch eager tokens/s | ratio | "
              "max diff |", "| --- | ---: | ---: | ---: | ---: |"]
    for r in results["encode"]:
        lines.append(f"| {r['model']} B={r['B']} T={r['T']} | {r['ours_tokens_per_s']:.0f} | "
                     f"{r['torch_tokens_per_s']:.0f} | {r['ratio']:.2f} | "
                     f"{r['max_abs_diff']:.1e} |")
    lines += ["", "| greedy decode (fp16) | ours new tokens/s | torch eager new tokens/s | ratio | "
              "prompt logits max diff | same tokens |",
              "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in results["decode"]:
        lines.append(f"| {r['model']} B={r['B']} prompt={r['prompt']} new={r['new_tokens']} | "
                     f"{r['ours_tokens_per_s']:.0f} | {r['torch_tokens_per_s']:.0f} | "
                     f"{r['ratio']:.2f} | {r['max_abs_diff']:.1e} | {r['same_tokens']:.0%} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer sizes")
    parser.add_argument("--output", default="bench/results/gpu", help="folder for the report")
    args = parser.parse_args(argv)
    import torch
    from transformer import ops
    from transformer.ops import cuda
    cp = cuda.cupy()
    if not torch.cuda.is_available():
        raise SystemExit("bench/gpu.py needs torch with CUDA")
    t0 = time.time()
    results = dict(device=torch.cuda.get_device_name(), cupy=cp.__version__,
                   torch=torch.__version__)
    results["attention"] = bench_attention(cp, torch, ops, args.quick)
    results["rows"] = bench_rows(cp, ops)
    results["gemm"] = bench_gemm(cp)
    results["encode"] = bench_encode(cp, torch, args.quick)
    results["decode"] = bench_decode(cp, torch, args.quick)
    results["seconds"] = time.time() - t0
    out = pathlib.Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "report.md").write_text(report(results))
    print(report(results))


if __name__ == "__main__":
    main()
