"""Train chapter 09's induction-head models and save them for the notebook (a checkpoint, not a test).

    python tools/train_induction.py            # writes helpers/checkpoints/induction.pt

Three runs of `helpers.diagnostics.induction_experiment` (INDUCTION_RUNS): seeds 0 and 1 on text
where copying pays, and the text-only control; about 40 CPU-seconds each at one thread. The
notebook loads the weights and the training curves (`load_induction_runs`) and recomputes every
score and loss from the weights; its flag RETRAIN trains them in the notebook instead.
tests/test_diagnostics.py retrains both seeds (slow) and checks the saved scores against them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from helpers import diagnostics as dg


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=dg.INDUCTION_CHECKPOINT)
    args = parser.parse_args(argv)
    runs = {}
    for name, kwargs in dg.INDUCTION_RUNS.items():
        result = dg.induction_experiment(**kwargs)
        model = result.pop("model")
        runs[name] = {"state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()},
                      "metrics": result}
        print(f"{name:10} previous-token {result['previous_token_score']:.2f}  induction "
              f"{result['induction_score']:.2f}  letters {result['loss_first_copy']:.2f} -> "
              f"{result['loss_second_copy']:.2f} nats  drop at step {result['drop_step']}  "
              f"{result['cpu_seconds']:.0f} CPU-s", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"setup": dict(dg.INDUCTION_SETUP), "torch": str(torch.__version__), "runs": runs}, args.out)
    print("saved", args.out, f"({args.out.stat().st_size / 1e6:.1f} MB)")
    return args.out


if __name__ == "__main__":
    main()
