"""Compare two recipes at the same training budget on the same data, over several seeds.

    python scripts/bench_recipes.py RECIPE_A RECIPE_B --seeds 3 [overrides ...]
    python scripts/bench_recipes.py default digits_demo --seeds 3 dataset=digits trainer.epochs=2

A recipe is a name in conf/experiment/ or ``default`` (no experiment: ``python run.py``'s
defaults), optionally followed, in the same quoted argument, by overrides of its own
(``"digits_demo loss=ce_triplet_angular"``), applied before the shared ones. Each (recipe, seed)
trains as ``python run.py experiment=RECIPE seed=S OVERRIDES``
in its own process, with MLflow off and the run directory under
``outputs/bench_recipes/<date>_<time>/<recipe>/seed<S>``; the overrides come last, so they set
the shared budget and data (``dataset=...``, ``trainer.epochs``, ``trainer.steps_per_epoch``,
``data.image_size``, ...). Before training, the composed configs of both recipes are compared
on what makes the budget and the data, and a difference is reported (``--strict``: refused).
Printed at the end: Recall@1 and mAP of each run's best model (``metrics.json``) per seed, and
their mean +- sample standard deviation per recipe.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# What must be equal for a fair comparison: the data, and the training budget.
BUDGET_KEYS = ("dataset", "data.image_size", "data.batch_size", "trainer.epochs", "trainer.steps_per_epoch")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("recipe_a", help='NAME or "NAME override ..."')
    parser.add_argument("recipe_b", help='NAME or "NAME override ..."')
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0 .. N-1 per recipe (default 3)")
    parser.add_argument("--strict", action="store_true", help="refuse recipes whose data or budget differ")
    parser.add_argument("--timeout", type=float, default=None, help="seconds allowed per training run")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides applied to both recipes, last")
    return parser.parse_intermixed_args(argv)


def recipe_overrides(recipe: str) -> list[str]:
    name, *own = recipe.split()
    return ([] if name == "default" else [f"experiment={name}"]) + own


def budget(recipe: str, overrides: list[str]) -> dict:
    from omegaconf import OmegaConf

    import recog

    cfg = recog.compose(recipe_overrides(recipe) + overrides)
    out = {}
    for key in BUDGET_KEYS:
        value = OmegaConf.select(cfg, key)
        out[key] = OmegaConf.to_container(value, resolve=False) if OmegaConf.is_config(value) else value
    return out


def train(recipe: str, seed: int, overrides: list[str], run_dir: Path, timeout: float | None) -> dict:
    command = [
        sys.executable,
        str(ROOT / "run.py"),
        *recipe_overrides(recipe),
        f"seed={seed}",
        "mlflow.enabled=false",
        f"hydra.run.dir={run_dir}",
        *overrides,
    ]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    run_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(run_dir.parent / f"seed{seed}.out", "w") as log:
        result = subprocess.run(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=timeout)
    seconds = time.perf_counter() - t0
    if result.returncode != 0:
        raise SystemExit(
            f"{recipe} seed {seed} failed (exit {result.returncode}); see {run_dir.parent / f'seed{seed}.out'}"
        )
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {"recall_at_1": float(metrics["recall_at_1"]), "mAP": float(metrics["mAP"]), "seconds": seconds}


def mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} +- {sd:.4f}"


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.seeds < 1:
        raise SystemExit("--seeds must be >= 1")
    recipes = [args.recipe_a, args.recipe_b]
    budgets = {r: budget(r, args.overrides) for r in recipes}
    differ = [k for k in BUDGET_KEYS if budgets[recipes[0]][k] != budgets[recipes[1]][k]]
    for key in differ:
        print(
            f"warning: {key} differs: {recipes[0]}={budgets[recipes[0]][key]!r}, "
            f"{recipes[1]}={budgets[recipes[1]][key]!r} (override it to compare at an equal budget)",
            flush=True,
        )
    if differ and args.strict:
        return 2
    root = ROOT / "outputs" / "bench_recipes" / time.strftime("%Y-%m-%d_%H-%M-%S")
    results = {r: [] for r in recipes}
    for seed in range(args.seeds):
        for recipe in recipes:  # interleaved: a change of machine load hits both alike
            folder = "_".join(recipe.split()).replace("/", "_").replace("=", "-")
            row = train(recipe, seed, args.overrides, root / folder / f"seed{seed}", args.timeout)
            results[recipe].append(row)
            print(
                f"{recipe} seed {seed}: recall@1 {row['recall_at_1']:.4f}  mAP {row['mAP']:.4f}  "
                f"({row['seconds']:.0f} s)",
                flush=True,
            )

    print()
    print(f"overrides: {' '.join(args.overrides) or '(none)'}; runs in {root}")
    width = max(28, *(len(r) for r in recipes))
    print(f"{'recipe':<{width}} {'seed':>4} {'Recall@1':>9} {'mAP':>8}")
    for recipe in recipes:
        for seed, row in enumerate(results[recipe]):
            print(f"{recipe:<{width}} {seed:>4} {row['recall_at_1']:>9.4f} {row['mAP']:>8.4f}")
    print()
    print(f"{'recipe':<{width}} {'Recall@1 (mean +- sd)':>24} {'mAP (mean +- sd)':>22}")
    for recipe in recipes:
        r1 = mean_sd([row["recall_at_1"] for row in results[recipe]])
        m = mean_sd([row["mAP"] for row in results[recipe]])
        print(f"{recipe:<{width}} {r1:>24} {m:>22}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
