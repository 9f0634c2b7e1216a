"""Pretrain a backbone on the glyph benchmark's pretraining split, as ImageNet weights are for photos.

    python scripts/pretrain_glyphs.py NAME [overrides ...]
    python scripts/pretrain_glyphs.py pplcnet_x2.5 backbone=pplcnet backbone.scale=2.5
    python scripts/pretrain_glyphs.py pplcnetv2_base backbone=pplcnet_v2 backbone.size=base backbone.shitu=true

Users fine-tune backbones pretrained on other data; nothing can be downloaded here, so the glyph
benchmark (``dataset=glyphs``, recog/data/glyphs.py) brings other data of its own: ``pretrain.txt``,
3,000-odd characters that are neither train nor test classes (nor look like one). This trains the
backbone (cut at ``flatten``) with a softmax classifier over them (``neck=none head=fc loss=ce_smooth``,
AdamW, 32 classes x 2 images a batch) with ``python run.py dataset=glyphs dataset.pretrain=true ...``,
evaluating only at the end and on the benchmark's train split (never its test split), then writes the
backbone's weights, without the ``backbone.`` prefix, to ``<paths.output_root>/pretrained/glyphs/NAME.safetensors``:
what ``backbone.pretrained=...`` loads. Overrides come last (``trainer.epochs=...``, the backbone).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PRETRAINING = [
    "dataset=glyphs",
    "dataset.pretrain=true",
    "backbone.stop_layer=flatten",
    "neck=none",
    "head=fc",
    "loss=ce_smooth",
    "optimizer=adamw",
    "optimizer.lr=0.002",
    "scheduler.warmup_epochs=0.2",
    "data.batch_size=64",
    "data.samples_per_class=2",
    "trainer.epochs=4",
    "trainer.eval_every=1000",  # one eval, after the last epoch (on the benchmark's train split)
    "mlflow.enabled=false",
    "export.after_train=false",
]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name", help="the weight file's name: <output root>/pretrained/glyphs/NAME.safetensors")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides: the backbone, trainer.epochs, ...")
    parser.add_argument("--run-dir", type=Path, help="the pretraining run (default outputs/pretrain_glyphs/NAME)")
    return parser.parse_args(argv)


def backbone_weights(model_file: Path) -> dict:
    """The ``backbone.*`` tensors of a recog ``model.safetensors``, without the prefix."""
    from safetensors.numpy import load_file

    tensors = load_file(str(model_file))
    weights = {k[len("backbone.") :]: v for k, v in tensors.items() if k.startswith("backbone.")}
    if not weights:
        raise SystemExit(f"{model_file} holds no backbone.* tensors")
    return weights


def pretrain(args: list[str], launcher) -> int:
    """``python run.py ARGS``'s exit status, run in this folder (``paths.output_root`` is relative to it):
    in this process (``recog.app.main``), or in a process of its own when it launches several (the
    launcher replaces the process that starts it, and this script has weights to write after it)."""
    if launcher.nproc_per_node == 1 and launcher.nnodes == 1:
        from recog.app import main as run_py

        return run_py(args, script=str(ROOT / "run.py"))
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args], env=env).returncode


def main(argv=None) -> int:
    args = parse_args(argv)
    import recog
    from recog.utils import atomic
    from recog.utils.checkpoint import safetensors_bytes

    overrides = PRETRAINING + list(args.overrides)
    cfg = recog.compose(overrides)
    run_dir = (args.run_dir or Path(cfg.paths.output_root) / "pretrain_glyphs" / args.name).absolute()
    started = time.perf_counter()
    if not (run_dir / "best_model" / "model.safetensors").is_file():
        code = pretrain(overrides + [f"hydra.run.dir={run_dir}"], cfg.launcher)
        if code != 0:
            return code
    weights = backbone_weights(run_dir / "best_model" / "model.safetensors")
    target = Path(cfg.paths.output_root) / "pretrained" / "glyphs" / f"{args.name}.safetensors"
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_bytes(target, safetensors_bytes(weights), "the pretrained backbone")
    minutes = (time.perf_counter() - started) / 60
    print(f"{target}: {len(weights)} backbone tensors ({minutes:.1f} min); use backbone.pretrained={target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
