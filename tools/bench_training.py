"""Training throughput of the shared model against nanoGPT's model.py architecture (a benchmark, not a test).

    python tools/bench_training.py                   # threads 1 and 2, every table
    python tools/bench_training.py --seconds 1 --rounds 5
    python tools/bench_training.py --compile         # also time torch.compile (compile time included)

At nanoGPT's CPU configuration (4 layers, 4 heads, d_model 128, block 64, batch 12, vocabulary 65,
no bias, no dropout) three models of the same shape train on the same random batches:

* course path: `TinyDecoder(kernels="course")`, the chapters' own functions (weights formed);
* fast path:   `TinyDecoder(kernels="fused")`, the same parameters and numbers on torch's kernels;
* nanoGPT:     `helpers.nanogpt.NanoGPT`, nanoGPT's model.py architecture, written from its description.

Two comparisons, each at one and at two threads, in interleaved rounds (helpers.nanogpt.compare_training):

1. the training step as each project runs it: the course's `helpers.training.train_step` with its
   optimizer `adamw` (clipping at 1.0, torch's fused AdamW), against nanoGPT's train.py iteration
   (clipping at 1.0, its configure_optimizers: the plain AdamW loop on a CPU);
2. the model alone: the same step for all three (F.cross_entropy, torch's default AdamW, no clipping).

Each row gives tokens/s (median of the rounds), the ratio to nanoGPT, the achieved GFLOP/s
(training FLOPs per token: 6 N + 12 L d T) and its fraction of the float32 matmul peak measured here
at the same thread count. On one thread both comparisons are repeated timed by the process's CPU
time, which a busy machine disturbs far less than the wall clock. Then the thread finding: how long one parallel operation takes on one and
on two threads, and how many operations a training step runs. Nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from helpers.blocks import ModelConfig, TinyDecoder  # noqa: E402
from helpers.nanogpt import (  # noqa: E402
    NANOGPT_CPU,
    NanoGPT,
    compare_training,
    load_average,
    matmul_peak,
    median,
    nanogpt_step,
    training_flops_per_token,
)
from helpers.training import adamw, param_count, train_step  # noqa: E402

C = NANOGPT_CPU
B, T, V = C["batch_size"], C["block_size"], C["vocab_size"]
NAMES = ("course path", "fast path", "nanoGPT")


def build(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if name == "nanoGPT":
        return NanoGPT(V, T, C["n_layer"], C["n_head"], C["n_embd"], bias=False, dropout=0.0)
    config = ModelConfig(vocab_size=V, d_model=C["n_embd"], n_heads=C["n_head"], n_layers=C["n_layer"],
                         max_seq_len=T, bias=False, kernels="fused" if name == "fast path" else "course")
    return TinyDecoder(config)


def batches(n: int = 8) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    data = [torch.randint(0, V, (B, T + 1), generator=gen) for _ in range(n)]
    return [(d[:, :-1].contiguous(), d[:, 1:].contiguous()) for d in data]  # x, y (B, T): y is x shifted by one


def as_run_steppers(models: dict, data: list) -> dict:
    """Each project's own training iteration (lr 1e-3, weight decay 0.1, betas (0.9, 0.99), clip 1.0)."""
    steppers = {}
    for name, model in models.items():
        if name == "nanoGPT":
            opt = model.configure_optimizers(0.1, 1e-3, (0.9, 0.99))
            steppers[name] = lambda i, m=model, o=opt: nanogpt_step(m, o, *data[i % len(data)])
        else:
            opt = adamw(model, 1e-3, betas=(0.9, 0.99), weight_decay=0.1)
            steppers[name] = lambda i, m=model, o=opt: train_step(m, o, *data[i % len(data)], grad_clip=1.0)
    return steppers


def same_step_steppers(models: dict, data: list) -> dict:
    """The same step for every model: F.cross_entropy, torch's default AdamW (its plain loop on a CPU)."""
    steppers = {}
    for name, model in models.items():
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1)

        def step(i: int, m=model, o=opt) -> None:
            x, y = data[i % len(data)]
            out = m(x)
            logits = out[0] if isinstance(out, tuple) else out  # NanoGPT returns (logits, loss)
            loss = F.cross_entropy(logits.reshape(-1, V), y.reshape(-1))
            o.zero_grad(set_to_none=True)
            loss.backward()
            o.step()
        steppers[name] = step
    return steppers


def table(title: str, results: dict, flops_per_token: int, peaks: dict) -> None:
    print(f"\n### {title}\n")
    print("| threads | model | tokens/s (median) | min..max | vs nanoGPT | GFLOP/s | of matmul peak |")
    print("|---|---|---|---|---|---|---|")
    for n, rates in results.items():
        base = median(rates["nanoGPT"])
        for name in NAMES:
            m = median(rates[name])
            gflops = m * flops_per_token / 1e9
            print(f"| {n} | {name} | {m:,.0f} | {min(rates[name]):,.0f}..{max(rates[name]):,.0f} | "
                  f"{m / base:.2f}x | {gflops:.0f} | {gflops / peaks[n]:.0%} |")


def cpu_time_table(steppers: dict, rounds: int, steps: int = 8) -> None:
    """One thread, timed by the process's CPU time (time.process_time) instead of the wall clock: on a
    machine other programs keep busy, the time this process waits for a core does not count, so the
    figures hold still where the wall-clock tables scatter. (Not for two threads: there CPU time adds
    both threads' time, spinning included.)"""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for step in steppers.values():
            for i in range(2):
                step(i)
        cpu: dict[str, list[float]] = {name: [] for name in steppers}
        for _ in range(rounds):
            for name, step in steppers.items():
                start = time.process_time()
                for i in range(steps):
                    step(i)
                cpu[name].append((time.process_time() - start) / steps)
    finally:
        torch.set_num_threads(before)
    base = median(cpu["nanoGPT"])
    print("| model | CPU ms per step (median) | min..max | tokens per CPU second | vs nanoGPT |")
    print("|---|---|---|---|---|")
    for name in NAMES:
        m = median(cpu[name])
        print(f"| {name} | {m * 1e3:.1f} | {min(cpu[name]) * 1e3:.1f}..{max(cpu[name]) * 1e3:.1f} | "
              f"{B * T / m:,.0f} | {base / m:.2f}x |")


def parallel_op_cost(threads: tuple[int, ...], repeats: int = 200) -> dict[tuple[int, int], float]:
    """Microseconds per torch.add on 1,000 and on 100,000 floats. ATen splits an operation across its
    threads only above 32,768 elements (its grain size): the small one always runs on one thread,
    the large one opens an OpenMP parallel region when there are two threads."""
    before = torch.get_num_threads()
    out: dict[tuple[int, int], float] = {}
    try:
        for size in (1_000, 100_000):
            x = torch.randn(size)
            y = torch.empty_like(x)
            for n in threads:
                torch.set_num_threads(n)
                torch.add(x, 1.0, out=y)
                start = time.perf_counter()
                for _ in range(repeats):
                    torch.add(x, 1.0, out=y)
                out[size, n] = (time.perf_counter() - start) / repeats * 1e6
    finally:
        torch.set_num_threads(before)
    return out


def op_census(model: torch.nn.Module, step) -> tuple[int, int]:
    """(operations, operations on 32,768+ elements) that torch's profiler sees in one training step."""
    from torch.profiler import ProfilerActivity, profile

    step(0)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        step(1)
    total = large = 0
    for event in prof.events():
        if not event.name.startswith("aten::") or event.cpu_parent is not None and \
                event.cpu_parent.name.startswith("aten::"):
            continue  # count top-level aten operations only, not the ones they call
        total += 1
        shapes = [s for s in (event.input_shapes or []) if isinstance(s, list) and s]
        if any(torch.Size(s).numel() >= 32_768 for s in shapes if all(isinstance(d, int) for d in s)):
            large += 1
    return total, large


def compile_timing(data: list, steps: int) -> None:
    """torch.compile on the fast path at one thread: compile time (the first steps) and steady speed."""
    torch.set_num_threads(1)
    results = {}
    for label in ("fast path, eager", "fast path, torch.compile"):
        model = build("fast path")
        opt = adamw(model, 1e-3, betas=(0.9, 0.99), weight_decay=0.1)
        run = torch.compile(model) if "compile" in label else model
        start = time.perf_counter()
        try:
            train_step(run, opt, *data[0])
        except Exception as error:  # no compiler on this machine: say so, do not fail
            print(f"\ntorch.compile failed: {type(error).__name__}: {str(error).splitlines()[0]}")
            return
        first = time.perf_counter() - start
        start = time.perf_counter()
        for i in range(steps):
            train_step(run, opt, *data[i % len(data)])
        rate = steps * B * T / (time.perf_counter() - start)
        results[label] = (first, rate)
    print("\n### torch.compile (one thread, fast path, the course's training step)\n")
    print("| variant | first step (compile) s | tokens/s after | steps to repay the compile |")
    print("|---|---|---|---|")
    eager_rate = results["fast path, eager"][1]
    for label, (first, rate) in results.items():
        gain = 1 / eager_rate - 1 / rate  # seconds saved per token
        repay = "-" if label.endswith("eager") else (
            f"{(first - results['fast path, eager'][0]) / (gain * B * T):,.0f}" if gain > 0 else "never")
        print(f"| {label} | {first:.2f} | {rate:,.0f} | {repay} |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=0.6, help="timed seconds per model and round")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--compile", action="store_true", help="also time torch.compile")
    args = parser.parse_args(argv)
    threads = tuple(args.threads)
    load_before = load_average()
    peaks = {n: matmul_peak(n) for n in threads}
    data = batches()
    models = {name: build(name) for name in NAMES}
    n_params = param_count(models["nanoGPT"]) - T * C["n_embd"]  # the position table is looked up, not multiplied
    flops = training_flops_per_token(n_params, C["n_layer"], C["n_embd"], T)
    as_run = compare_training(as_run_steppers(models, data), B * T, threads=threads, rounds=args.rounds,
                              seconds=args.seconds)
    models = {name: build(name) for name in NAMES}
    same = compare_training(same_step_steppers(models, data), B * T, threads=threads, rounds=args.rounds,
                            seconds=args.seconds)
    load_after = load_average()

    print(f"nanoGPT CPU configuration: {C['n_layer']} layers, {C['n_head']} heads, d_model {C['n_embd']}, "
          f"block {T}, batch {B}, vocabulary {V}, no bias, no dropout")
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, {platform.machine()}, {platform.processor() or ''}; "
          f"load average {load_before:.1f} before, {load_after:.1f} after")
    print(f"{args.rounds} interleaved rounds of {args.seconds} s per model; training FLOPs per token "
          f"6 N + 12 L d T = {flops / 1e6:.2f} M (N = {n_params:,}); float32 matmul peak here: "
          + ", ".join(f"{peaks[n]:.0f} GFLOP/s on {n} thread{'s' if n > 1 else ''}" for n in threads))
    table("1. The training step as each project runs it", as_run, flops, peaks)
    table("2. The model alone (same loss, same default AdamW, no clipping)", same, flops, peaks)
    if 1 in threads:
        for title, make in (("3. One thread by CPU time: the training step as each project runs it", as_run_steppers),
                            ("4. One thread by CPU time: the model alone", same_step_steppers)):
            print(f"\n### {title}\n")
            cpu_time_table(make({name: build(name) for name in NAMES}, data), args.rounds)

    cost = parallel_op_cost(threads)
    print("\n### Why two threads can lose: the cost of one operation\n")
    print("| elements | " + " | ".join(f"{n} thread{'s' if n > 1 else ''} (us)" for n in threads) + " |")
    print("|---|" + "---|" * len(threads))
    for size in (1_000, 100_000):
        print(f"| {size:,} | " + " | ".join(f"{cost[size, n]:,.1f}" for n in threads) + " |")
    fast = models["fast path"]
    opt = torch.optim.AdamW(fast.parameters(), lr=1e-3)
    total, large = op_census(fast, lambda i: same_step_steppers({"fast path": fast}, data)["fast path"](i))
    del opt
    print(f"\nOne training step of the fast path runs {total} aten operations; {large} of them touch 32,768+ "
          f"elements, the ones ATen may split across threads (each split is a hand-off and a barrier).")
    print(f"load average at the end: {load_average():.1f}")
    if args.compile:
        compile_timing(data, steps=20)


if __name__ == "__main__":
    main()
