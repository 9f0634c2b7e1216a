"""Compare recipes at the same training budget on the same data, over several seeds.

    python scripts/bench_recipes.py paddleclas_2021 default --seeds 3 dataset=glyphs
    python scripts/bench_recipes.py default "default trainer.depthwise_matmul=false" --seeds 5 dataset=glyphs
    python scripts/bench_recipes.py default digits_demo --seeds 3 dataset=digits trainer.epochs=2

A recipe is a name in conf/experiment/ or ``default`` (no experiment: ``python run.py``'s
defaults), optionally followed, in the same quoted argument, by overrides of its own
(``"digits_demo loss=ce_triplet_angular"``), applied before the shared ones; ``NAME=recipe ...``
(``"momentum_lr0.1=default optimizer=momentum optimizer.lr=0.1"``) gives it a short name for the
table. Each (recipe, seed) trains as ``python run.py experiment=RECIPE seed=S OVERRIDES`` in its own
process, with MLflow off, into ``OUT/<recipe>/seed<S>`` (``--out``, default
``outputs/bench_recipes/<date>_<time>``); the shared overrides come last, so they set the budget
and data (``dataset=glyphs``, ``trainer.epochs``, ...). ``--jobs N`` trains N runs at a time, the
cores shared among them (``OMP_NUM_THREADS``: on 2 cores two 1-thread runs train more images per
second in all than one 2-thread run at these sizes). A run whose folder already holds its
``result.json`` is not trained again: an interrupted comparison continues with the same ``--out``,
and more seeds or recipes can be added to it. Before training, the composed configs are compared on
what makes the budget and the data, and a difference is reported (``--strict``: refused);
``--dry-run`` stops there and prints each run's command.

Printed at the end, per recipe: Recall@1 of each seed's best model (``metrics.json``) and its
Recall@1 after each evaluated epoch, then mean +- sample standard deviation and range of Recall@1 and
mAP, and the median wall and CPU time of a run. ``OUT/table.md`` holds the same as a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# What must be equal for a fair comparison: the data, and the training budget.
BUDGET_KEYS = (
    "dataset",
    "data.image_size",
    "data.batch_size",
    "data.samples_per_class",
    "trainer.epochs",
    "trainer.steps_per_epoch",
)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "recipes", nargs="+", help='NAME, "NAME override ...", "LABEL=NAME override ..."; and shared overrides'
    )
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0 .. N-1 per recipe (default 3)")
    parser.add_argument("--first-seed", type=int, default=0, help="seeds FIRST .. FIRST+N-1")
    parser.add_argument("--out", type=Path, help="results folder (reused: finished runs are not repeated)")
    parser.add_argument("--strict", action="store_true", help="refuse recipes whose data or budget differ")
    parser.add_argument("--timeout", type=float, default=None, help="seconds allowed per training run")
    parser.add_argument(
        "--jobs", type=int, default=1, help="runs at a time, the cores shared among them (OMP_NUM_THREADS)"
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="compose every recipe, compare the budgets, print the runs; train none"
    )
    parser.set_defaults(overrides=[])
    args, rest = parser.parse_known_intermixed_args(argv)
    # Positional arguments that name a recipe are recipes; the others are shared Hydra overrides.
    recipes = []
    for item in args.recipes + rest:
        (recipes if is_recipe(item) else args.overrides).append(item)
    args.recipes = recipes
    if not recipes:
        parser.error("name at least one recipe: default or a file of conf/experiment/")
    return args


def is_recipe(item: str) -> bool:
    """``default``, an experiment name, or ``LABEL=`` one of them, as the first word."""
    name = item.split()[0].split("=", 1)[-1] if item.split() else ""
    return name == "default" or (ROOT / "conf" / "experiment" / f"{name}.yaml").is_file()


def split_recipe(recipe: str) -> tuple[str, list[str]]:
    """``(label, overrides)`` of ``[LABEL=]NAME [override ...]``."""
    first, *own = recipe.split()
    label = None
    if "=" in first and not first.startswith("experiment"):
        label, first = first.split("=", 1)
    overrides = ([] if first == "default" else [f"experiment={first}"]) + own
    return label or "_".join(recipe.split()).replace("/", "_").replace("=", "-"), overrides


def budget(recipe: str, overrides: list[str]) -> dict:
    from omegaconf import OmegaConf

    import recog

    cfg = recog.compose(split_recipe(recipe)[1] + overrides)
    out = {}
    for key in BUDGET_KEYS:
        value = OmegaConf.select(cfg, key)
        out[key] = OmegaConf.to_container(value, resolve=False) if OmegaConf.is_config(value) else value
    return out


def epoch_recalls(log_text: str) -> list[float]:
    """Recall@1 after each evaluated epoch, from the run's log (``epoch N eval`` tables)."""
    recalls = {}
    for block in log_text.split("epoch ")[1:]:
        head = re.match(r"(\d+) eval\n", block)
        value = re.search(r"^recall_at_1\s+([0-9.]+)", block, re.MULTILINE)
        if head and value:
            recalls[int(head.group(1))] = float(value.group(1))
    return [recalls[k] for k in sorted(recalls)]


def run_command(recipe: str, seed: int, overrides: list[str], run_dir: Path) -> list[str]:
    """The ``python run.py ...`` command of one (recipe, seed) run."""
    return [
        sys.executable,
        str(ROOT / "run.py"),
        *split_recipe(recipe)[1],
        f"seed={seed}",
        "mlflow.enabled=false",
        "export.after_train=false",
        f"hydra.run.dir={run_dir}",
        *overrides,
    ]


def train(recipe: str, seed: int, overrides: list[str], run_dir: Path, timeout: float | None, threads: int) -> dict:
    """One training run (or its saved result): best-model Recall@1 and mAP, per-epoch Recall@1, times."""
    result_file = run_dir / "result.json"
    if result_file.is_file():
        return json.loads(result_file.read_text())
    command = run_command(recipe, seed, overrides, run_dir)
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env["OMP_NUM_THREADS"] = str(threads)
    run_dir.mkdir(parents=True, exist_ok=True)
    log_path = run_dir / "train.log"
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            _, status, usage = os.wait4(process.pid, 0) if timeout is None else _wait(process, timeout)
        finally:
            if process.poll() is None:
                process.kill()
    seconds = time.perf_counter() - t0
    returncode = os.waitstatus_to_exitcode(status)
    if returncode != 0:
        raise SystemExit(f"{recipe} seed {seed} failed (exit {returncode}); see {log_path}")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    row = {
        "recall_at_1": float(metrics["recall_at_1"]),
        "mAP": float(metrics["mAP"]),
        "best_epoch": metrics.get("epoch"),
        "epochs": epoch_recalls(log_path.read_text(errors="replace")),
        "seconds": seconds,
        "cpu_seconds": usage.ru_utime + usage.ru_stime,  # the run's own process (loader workers not counted)
        "threads": threads,
        "command": command,
    }
    result_file.write_text(json.dumps(row, indent=1) + "\n")
    return row


def _wait(process: subprocess.Popen, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            return pid, status, usage
        time.sleep(1.0)
    process.kill()
    raise SystemExit(f"a run took over {timeout:.0f} s: {' '.join(process.args)}")


def summary(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} +- {sd:.4f} ({min(values):.3f}-{max(values):.3f})"


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.seeds < 1:
        raise SystemExit("--seeds must be >= 1")
    budgets = {r: budget(r, args.overrides) for r in args.recipes}
    reference = args.recipes[0]
    differ = sorted({k for r in args.recipes for k in BUDGET_KEYS if budgets[r][k] != budgets[reference][k]})
    for key in differ:
        values = ", ".join(f"{split_recipe(r)[0]}={budgets[r][key]!r}" for r in args.recipes)
        print(f"warning: {key} differs: {values} (override it to compare at an equal budget)", flush=True)
    if differ and args.strict:
        return 2
    out = args.out or ROOT / "outputs" / "bench_recipes" / time.strftime("%Y-%m-%d_%H-%M-%S")
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    results = {r: {} for r in args.recipes}
    threads = max(1, (os.cpu_count() or 1) // max(1, args.jobs))
    runs = [(recipe, seed) for seed in seeds for recipe in args.recipes]  # interleaved: load hits all alike

    def folder(recipe: str, seed: int) -> Path:
        return out / split_recipe(recipe)[0] / f"seed{seed}"

    if args.dry_run:
        for recipe, seed in runs:
            command = run_command(recipe, seed, args.overrides, folder(recipe, seed))
            print(f"{split_recipe(recipe)[0]} seed {seed}: {' '.join(command)}")
        return 0

    def run(recipe: str, seed: int) -> None:
        row = train(recipe, seed, args.overrides, folder(recipe, seed), args.timeout, threads)
        results[recipe][seed] = row
        epochs = " / ".join(f"{v:.3f}" for v in row["epochs"])
        print(
            f"{split_recipe(recipe)[0]} seed {seed}: recall@1 {row['recall_at_1']:.4f} (epochs {epochs})  "
            f"mAP {row['mAP']:.4f}  ({row['seconds']:.0f} s, {row['cpu_seconds']:.0f} CPU s)",
            flush=True,
        )

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for future in [pool.submit(run, recipe, seed) for recipe, seed in runs]:
            future.result()

    lines = [
        f"shared overrides: {' '.join(args.overrides) or '(none)'}; runs in {out}",
        "",
        "| recipe | Recall@1 per seed (after each epoch) | Recall@1 mean +- sd (range) | mAP mean +- sd (range) "
        "| run: wall / CPU (median) |",
        "|---|---|---|---|---|",
    ]
    for recipe in args.recipes:
        rows = [results[recipe][s] for s in seeds]
        per_seed = "; ".join(
            f"s{s}: **{row['recall_at_1']:.3f}** ({' / '.join(f'{v:.3f}' for v in row['epochs'])})"
            for s, row in zip(seeds, rows)
        )
        wall = statistics.median(row["seconds"] for row in rows)
        cpu = statistics.median(row["cpu_seconds"] for row in rows)
        lines.append(
            f"| {split_recipe(recipe)[0]} | {per_seed} | {summary([r['recall_at_1'] for r in rows])} "
            f"| {summary([r['mAP'] for r in rows])} | {wall / 60:.1f} / {cpu / 60:.1f} min |"
        )
    table = "\n".join(lines)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(table + "\n")
    print()
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
