"""Train chapter 08's planted-fault runs and save their loss curves for exercise 7 (data, not a test).

    python tools/loss_curves.py            # writes helpers/checkpoints/loss_curves.json

The five runs of `helpers.loss_curves.fault_runs` (the healthy recipe and four faults, seed 0), about
25 CPU-seconds at one thread. The exercise loads the file and plots it; tests/test_loss_curves.py checks
the shipped curves' qualitative facts and that a retrain on another seed reproduces them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from helpers import loss_curves as lc


def _rounded(value):
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return value


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=lc.CURVES_FILE)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    data = _rounded({**lc.fault_runs(args.seed), "setup": lc.SETUP, "changes": lc.CHANGES})
    for fault, run in data["runs"].items():
        print(f"{fault:14} final val {run['val_loss'][-1]:.3f}  max train {max(run['train_loss']):.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(data, separators=(",", ":")) + "\n")
    print("saved", args.out, f"({args.out.stat().st_size / 1e3:.1f} KB)")
    return args.out


if __name__ == "__main__":
    main()
