"""Chapter 07's benchmarks (numbers, not tests: nothing here asserts a time or a size).

    python tools/bench_complexity.py                  # both tables
    python tools/bench_complexity.py --threads 1      # pin torch to one thread
    python tools/bench_complexity.py --only memory    # or --only generation

1. Generation: the course model at 4 layers, 4 heads, d_model 128 (vocabulary 512, learned positions),
   on the course path and on the fast path (kernels="fused"), generates 512 new tokens greedily after
   an 8-token prompt, with the KV cache (prefill once, then one token per step) and without it (the
   whole sequence recomputed every step). Prints both times, the speed-up, the milliseconds per cached
   token beside the FLOPs of a decoding step (GFLOP/s and the fraction of a matmul's rate), and
   whether the tokens are identical.

2. Attention memory: naive attention (chapter 01's, which holds the (B, H, T, T) scores and weights)
   against helpers.complexity.tiled_attention (the online softmax, block 128) for q, k, v of shape
   (1, 4, T, 32) at T = 1024, 2048, 4096. Each (method, T) runs in a fresh Python process, which
   measures memory two ways:
     * peak RSS: the process's resident-memory high-water mark during the call minus its resident
       memory just before it (Linux: the mark VmHWM is reset by writing 5 to /proc/self/clear_refs,
       then read from /proc/self/status), after the inputs were made and a small warm-up call ran.
       This is what the operating system saw, allocator caches included. (Python's tracemalloc
       would see nothing here: torch allocates its tensors in C++, outside Python's allocator.)
     * peak tensor bytes: helpers.complexity.peak_tensor_bytes, the largest total size of the tensors
       torch's operators had alive at once during the call (torch's own view, independent of the
       allocator).
   and the time (best of 3 calls).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MEMORY_CHILD = r"""
import json, sys, time
import torch
torch.set_num_threads(int(sys.argv[3]))
from helpers.attention import scaled_dot_product_attention
from helpers.complexity import peak_tensor_bytes, tiled_attention
method, T = sys.argv[1], int(sys.argv[2])
run = {"naive": lambda q, k, v: scaled_dot_product_attention(q, k, v)[0],
       "tiled": lambda q, k, v: tiled_attention(q, k, v, block_size=128)}[method]
gen = torch.Generator().manual_seed(0)
q, k, v = (torch.randn(1, 4, T, 32, generator=gen) for _ in range(3))
small = [t[:, :, :64].contiguous() for t in (q, k, v)]
def status_kib(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
run(*small)  # warm-up: load kernels, touch the allocator
before = status_kib("VmRSS")
with open("/proc/self/clear_refs", "w") as handle:
    handle.write("5")  # reset the high-water mark VmHWM to the current RSS
start = time.perf_counter()
out = run(q, k, v)
first = time.perf_counter() - start
after = status_kib("VmHWM")
del out
times = [first]
for _ in range(2):
    start = time.perf_counter()
    run(q, k, v)
    times.append(time.perf_counter() - start)
_, tensor_peak = peak_tensor_bytes(run, q, k, v)
print(json.dumps({"rss_peak_bytes": (after - before) * 1024, "tensor_peak_bytes": tensor_peak,
                  "seconds": min(times)}))
"""


def memory_table(threads: int) -> None:
    print("\n## Naive vs tiled attention: peak memory and time, q, k, v (1, 4, T, 32) float32\n")
    print("| T | score matrix (formula) | naive: peak RSS | naive: peak tensor bytes | naive time | "
          "tiled: peak RSS | tiled: peak tensor bytes | tiled time | tiled / naive (tensor bytes) |")
    print("|---|---|---|---|---|---|---|---|---|")
    from helpers.complexity import score_bytes

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for T in (1024, 2048, 4096):
        row = {}
        for method in ("naive", "tiled"):
            done = subprocess.run([sys.executable, "-c", MEMORY_CHILD, method, str(T), str(threads)],
                                  capture_output=True, text=True, env=env, cwd=ROOT, check=True)
            row[method] = json.loads(done.stdout.strip().splitlines()[-1])
        n, t = row["naive"], row["tiled"]
        mib = 2**20
        print(f"| {T} | {score_bytes(1, 4, T) / mib:.0f} MiB | {n['rss_peak_bytes'] / mib:.1f} MiB | "
              f"{n['tensor_peak_bytes'] / mib:.1f} MiB | {n['seconds'] * 1e3:.0f} ms | {t['rss_peak_bytes'] / mib:.1f} MiB | "
              f"{t['tensor_peak_bytes'] / mib:.1f} MiB | {t['seconds'] * 1e3:.0f} ms | "
              f"{t['tensor_peak_bytes'] / n['tensor_peak_bytes']:.3f} |")


def generation_table(new_tokens: int, threads: int | None = None) -> None:
    """Both kernels (course, fused), cached against recomputed, with the decode latency per token beside
    the FLOPs of one decoding step (helpers.complexity.decode_step_flops) and a matmul's rate here.
    threads: fix generate's thread count; None lets generate choose (helpers.threads)."""
    from dataclasses import replace

    from helpers.blocks import ModelConfig, TinyDecoder, generate
    from helpers.complexity import decode_step_flops
    from helpers.nanogpt import matmul_peak

    config = ModelConfig(vocab_size=512, d_model=128, n_heads=4, n_layers=4, max_seq_len=8 + new_tokens)
    prompt = torch.randint(0, 512, (1, 8), generator=torch.Generator().manual_seed(1))
    per_token = sum(decode_step_flops(config, t) for t in range(8, 8 + new_tokens)) / new_tokens
    peak = matmul_peak(1)
    print(f"\n## Generation of {new_tokens} new tokens (4 layers, 4 heads, d_model 128, greedy, 8-token prompt; "
          f"torch threads {torch.get_num_threads()}, generate's threads: {threads or 'its own choice'})\n")
    print(f"one decoding step: {per_token / 1e6:.2f} MFLOP on average; float32 matmul peak on one thread "
          f"{peak:.0f} GFLOP/s, so {per_token / peak / 1e3:.1f} us of arithmetic per token\n")
    print("| kernels | cached s | recomputed s | speed-up | ms per cached token | GFLOP/s | of peak | same tokens |")
    print("|---|---|---|---|---|---|---|---|")
    for kernels in ("course", "fused"):
        torch.manual_seed(0)
        model = TinyDecoder(replace(config, kernels=kernels)).eval()
        generate(model, prompt, 8, threads=threads)  # warm-up
        start = time.perf_counter()
        cached = generate(model, prompt, new_tokens, use_cache=True, temperature=0, threads=threads)
        t_cached = time.perf_counter() - start
        start = time.perf_counter()
        full = generate(model, prompt, new_tokens, use_cache=False, temperature=0, threads=threads)
        t_full = time.perf_counter() - start
        rate = per_token / (t_cached / new_tokens) / 1e9
        print(f"| {kernels} | {t_cached:.2f} | {t_full:.2f} | {t_full / t_cached:.1f}x | "
              f"{t_cached / new_tokens * 1e3:.2f} | {rate:.2f} | {rate / peak:.1%} | {torch.equal(cached, full)} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads (default: torch's)")
    parser.add_argument("--new-tokens", type=int, default=512)
    parser.add_argument("--only", choices=("generation", "memory"))
    parser.add_argument("--generate-threads", type=int, default=None,
                        help="fix generate's thread count (default: generate chooses, helpers.threads)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.only != "memory":
        generation_table(args.new_tokens, args.generate_threads)
    if args.only != "generation":
        memory_table(args.threads)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\nmachine: {platform.platform()}, {os.cpu_count()} CPUs, {args.threads} torch threads, "
          f"load average {load:.1f}, Python {platform.python_version()}, torch {torch.__version__}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
