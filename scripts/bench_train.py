"""Training throughput: the training step in every mode, the data pipeline, eval and checkpoint costs,
and (``--against paddleclas``) recog side by side with PaddleClas's RecModel in one process.
(Over 300 lines: the PaddleClas side, building its RecModel from the wheel and copying weights, is a
candidate for a module of its own; kept here while it has one caller.)

    python scripts/bench_train.py backbone.scale=1.0 data.image_size=64 data.batch_size=64 \\
        neck.embedding_size=128 loss=ce_triplet optimizer=momentum --against paddleclas
    python scripts/bench_train.py experiment=digits_demo data.num_workers=0 --steps 5

Arguments are Hydra overrides, composed as ``python run.py stage=train`` composes them (the digits by
default; PP-LCNet, FC neck, ArcMargin head, CE with 0.1 smoothing and AdamW are the defaults;
``optimizer=momentum`` for PaddleClas's Momentum with L2).

Without ``--against`` it prints images/s of the data pipeline alone (the training loader: decode +
augment + batch), of the training step alone on batches in memory (``StepRunner``: forward, loss,
backward, finite check, optimizer; dygraph with and without ``trainer.depthwise_matmul``, and
compiled), of the training loop (both, as ``stage=train`` runs them, in the default mode), which
bounds training, and the seconds an epoch spends on eval (``trainer.eval_every``) and on writing
``checkpoints/last``.

``--against paddleclas`` builds PaddleClas 2.6's RecModel for the same backbone / stop layer / neck /
head from the wheel in ``.venv/oracles`` (imported from the archive, never installed), copies
recog's weights into it so both compute the same function, and alternates timed rounds of

- PaddleClas bare step: their model, the loss, backward, optimizer (the wheel ships no losses:
  both sides use recog's loss terms, which follow PaddleClas's formulas);
- recog bare step: the same on recog's model;
- recog's ``StepRunner`` in each mode (dygraph with ``trainer.depthwise_matmul`` off and on,
  ``trainer.compile``; ``--modes`` measures fewer), the default marked.

First every contender runs the same 3 batches from the same weights (dropout reseeded per step),
and the step-3 losses must agree (``--loss-rtol``; a mismatch is printed, and the exit code is 1 when
it is a bare step's or the default mode's). Then ``--rounds`` rounds, each timing
``--round-steps`` steps of every contender, the order rotated per round. Printed last: images/s
(median over rounds) and the ratio to PaddleClas per round (median, min-max). On a shared machine
absolute figures drift; ratios within a round do not.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REPO = Path(__file__).resolve().parents[1]


# The training-step modes measured: name -> (trainer.compile, trainer.depthwise_matmul).
STEP_MODES = {"dygraph": ("false", "false"), "depthwise": ("false", "true"), "compiled": ("true", "auto")}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. backbone.scale=1.0 data.batch_size=64")
    parser.add_argument("--against", choices=["paddleclas"], help="alternate timed rounds against PaddleClas")
    parser.add_argument(
        "--modes",
        default=",".join(STEP_MODES),
        help=f"the StepRunner modes measured, comma-separated (default all: {','.join(STEP_MODES)})",
    )
    parser.add_argument(
        "--steps", type=int, default=8, help="timed training steps per mode, alone and in the loop (default 8)"
    )
    parser.add_argument("--data-batches", type=int, default=30, help="timed batches of the data pipeline (default 30)")
    parser.add_argument(
        "--warmup",
        type=int,
        default=2,
        help="untimed steps / batches first (default 2; at least 3 for a compiled step)",
    )
    parser.add_argument("--rounds", type=int, default=5, help="--against: timed rounds (default 5)")
    parser.add_argument(
        "--round-steps", type=int, default=2, help="--against: steps per contender per round (default 2)"
    )
    parser.add_argument(
        "--loss-rtol",
        type=float,
        default=2e-3,
        help="--against: relative tolerance of the step-3 losses (default 2e-3)",
    )
    parser.add_argument(
        "--wheel", type=Path, default=None, help="the PaddleClas wheel (default: .venv/oracles/paddleclas-2.6.0-*.whl)"
    )
    args = parser.parse_intermixed_args(argv)  # overrides before and after the flags
    args.modes = [name.strip() for name in args.modes.split(",") if name.strip()]
    unknown = [name for name in args.modes if name not in STEP_MODES]
    if unknown or not args.modes:
        parser.error(f"--modes: expected names among {', '.join(STEP_MODES)}, got {', '.join(unknown) or 'none'}")
    return args


def fitting_samples_per_class(batch_size: int, samples_per_class: int, classes: int) -> int:
    """``samples_per_class``, or the smallest divisor of ``batch_size`` above it whose P x K batch
    needs no more than ``classes`` classes (a small dataset, e.g. the digits' 5)."""
    for k in range(samples_per_class, batch_size + 1):
        if batch_size % k == 0 and batch_size // k <= classes:
            return k
    return samples_per_class  # the loader then says what is wrong


# ---- PaddleClas ----------------------------------------------------------------------------------


def import_paddleclas(wheel: Path | None, into: Path):
    """``ppcls.arch`` from the wheel, extracted under ``into`` (ppcls is a namespace package:
    zipimport cannot load it)."""
    if wheel is None:
        wheels = sorted((REPO / ".venv" / "oracles").glob("paddleclas-2.6.0-*.whl")) or sorted(
            (Path(sys.prefix) / "oracles").glob("paddleclas-2.6.0-*.whl")
        )
        if not wheels:
            raise SystemExit(
                "bench_train: the PaddleClas wheel is not in .venv/oracles (make install puts it "
                "there); pass --wheel PATH"
            )
        wheel = wheels[-1]
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(into, [n for n in archive.namelist() if n.startswith("paddleclas/ppcls/")])
    sys.path.insert(0, str(into / "paddleclas"))
    from ppcls.utils import logger

    logger.init_logger()
    import ppcls.arch as arch

    return arch


def paddleclas_model(arch, cfg, class_num: int):
    """PaddleClas's RecModel for ``cfg``'s backbone (PP-LCNet or ResNet_vd), stop layer, FC neck and
    margin head."""
    backbone = cfg.backbone
    target = str(backbone._target_).rsplit(".", 1)[-1]
    if target == "PPLCNet":
        name = "PPLCNet_x" + str(float(backbone.scale)).replace(".", "_")
    elif target == "ResNetVd":
        name = f"ResNet{int(backbone.depth)}_vd"
    else:
        raise SystemExit(
            f"bench_train --against paddleclas: backbone {target} has no PaddleClas counterpart here "
            "(PP-LCNet and ResNet_vd do)"
        )
    config = {"Backbone": {"name": name, "pretrained": False}}
    if backbone.get("stop_layer"):
        config["BackboneStopLayer"] = {"name": str(backbone.stop_layer)}
    return arch.RecModel(**config), name


def paddleclas_gears(arch, recog_model, cfg):
    """Their FC neck and margin head, shaped like recog's."""
    from ppcls.arch.gears import build_gear

    neck = head = None
    if recog_model.neck is not None:
        fc = recog_model.neck.fc
        neck = build_gear({"name": "FC", "embedding_size": fc.weight.shape[0], "class_num": fc.weight.shape[1]})
    if recog_model.head is not None:
        head_name = type(recog_model.head).__name__
        kwargs = {k: cfg.head[k] for k in ("margin", "scale", "easy_margin") if k in cfg.head}
        head = build_gear(
            {
                "name": head_name,
                "embedding_size": recog_model.embedding_size,
                "class_num": int(recog_model.head.class_num),
                **kwargs,
            }
        )
    return neck, head


def copy_weights(source, target) -> int:
    """``source``'s parameters and buffers into ``target``, matched by position (same layer order,
    every shape checked); returns how many tensors were copied."""
    src, dst = list(source.state_dict().items()), list(target.state_dict().items())
    if len(src) != len(dst):
        raise SystemExit(
            f"bench_train: recog's model has {len(src)} tensors, PaddleClas's {len(dst)}: "
            "they are not the same architecture"
        )
    for (src_name, value), (dst_name, slot) in zip(src, dst):
        if list(value.shape) != list(slot.shape):
            raise SystemExit(f"bench_train: {src_name} {value.shape} vs {dst_name} {slot.shape}")
        slot.set_value(value)
    return len(src)


# ---- timing --------------------------------------------------------------------------------------


def main(argv=None) -> int:
    args = parse_args(argv)
    import paddle

    import recog  # first: sets OMP_NUM_THREADS to all cores (unless set) before Paddle is imported
    from recog.api import build_loss, build_model, build_optimizer, load_splits
    from recog.data import build_train_loader, build_transform, set_loader_epoch
    from recog.data.loader import dataset_options, to_device
    from recog.errors import RecogError
    from recog.training.depthwise import resolve_depthwise_matmul
    from recog.training.step import StepRunner, TrainNet
    from recog.training.strategy import configure_step, resolve_step_mode
    from recog.utils.runtime import seed_everything, select_device

    try:
        cfg = recog.compose(list(args.overrides) + ["mlflow.enabled=false"])
        device = select_device(cfg.trainer.device)
        seed_everything(cfg.seed)
        splits = load_splits(cfg)
        labels = splits.train_labels_contiguous()
        data = cfg.data
        transform = build_transform(data.image_size, data.mean, data.std, train=True, hflip=splits.mirror_invariant)
        per_class = fitting_samples_per_class(data.batch_size, data.samples_per_class, splits.num_train_classes)
        if per_class != data.samples_per_class:
            print(
                f"note: batch {data.batch_size} of {data.samples_per_class} per class needs more than the "
                f"{splits.num_train_classes} training classes: measuring with data.samples_per_class={per_class} "
                "(the throughput does not depend on it)"
            )
        loader = build_train_loader(
            splits.train, labels, transform, data.batch_size, per_class, data.num_workers, cfg.seed
        )
    except RecogError as error:
        print(f"bench_train: {error}", file=sys.stderr)
        return 2
    device_kind = "cpu" if paddle.get_device() == "cpu" else "gpu"

    def new_model():
        paddle.seed(cfg.seed)
        model = build_model(cfg, class_num=splits.num_train_classes)
        loss_fn = build_loss(cfg, class_num=splits.num_train_classes, embedding_size=model.embedding_size)
        model.train()
        return model, loss_fn

    reference, _ = new_model()

    def runner_for(compile_: str, depthwise: str = "auto"):
        """A StepRunner in one mode: (runner, optimizer, schedule, label, model, loss_fn)."""
        model, loss_fn = new_model()
        copy_weights(reference, model)
        optimizer, schedule = build_optimizer(cfg, model.parameters() + loss_fn.parameters(), len(loader))
        runner = StepRunner(
            TrainNet(model, loss_fn), optimizer, schedule, skip_nonfinite=True
        )  # a NaN must not end the benchmark
        trainer = cfg.trainer.copy()
        trainer.compile, trainer.depthwise_matmul = compile_, depthwise
        strategy = configure_step(runner, trainer)
        return runner, optimizer, schedule, describe(strategy.mode, trainer), model, loss_fn

    def describe(mode, trainer) -> str:
        matmul = not mode.compile and resolve_depthwise_matmul(trainer, device_kind)
        return mode.describe() + (", depthwise as matmul" if matmul else "")

    default_mode = describe(resolve_step_mode(cfg.trainer, device_kind), cfg.trainer)
    modes = [STEP_MODES[name] for name in args.modes]  # (trainer.compile, trainer.depthwise_matmul)
    batch = int(data.batch_size)
    threads = os.environ.get("OMP_NUM_THREADS", "?")
    print(
        f"{' '.join(args.overrides) or '(defaults)'}\n{type(reference.backbone).__name__} at {data.image_size} px, "
        f"batch {batch} ({per_class} per class), {len(splits.train)} training images "
        f"({len(loader)} batches per epoch); device {device}, {threads} CPU threads, "
        f"{data.num_workers} loader worker(s), Paddle {paddle.__version__}; default step: "
        f"{default_mode}",
        flush=True,
    )

    epoch = [0]

    def batches():
        """The loader's batches, epoch after epoch, checked on the host as the train loop does."""
        while True:
            set_loader_epoch(loader, epoch[0])
            for images, batch_labels in loader:
                loader.dataset.check_batch(batch_labels.numpy(), training=True)
                yield images, batch_labels
            epoch[0] += 1

    stream = batches()
    in_memory = [next(stream) for _ in range(4)]

    if args.against:
        with tempfile.TemporaryDirectory() as unpacked:
            return against_paddleclas(
                args,
                cfg,
                reference,
                new_model,
                runner_for,
                modes,
                default_mode,
                in_memory,
                batch,
                Path(unpacked),
                loader,
                build_optimizer,
                to_device,
            )

    def timed(count, step, warmup=args.warmup):
        for _ in range(warmup):
            step()
        started = time.perf_counter()
        for _ in range(count):
            step()
        return count * batch / (time.perf_counter() - started)

    data_rate = timed(args.data_batches, lambda: next(stream))
    print(f"data pipeline measured ({args.data_batches} batches)", flush=True)

    step_rates = {}
    default_runner = None
    for compile_, depthwise in modes:
        runner, optimizer, schedule, mode, model, loss_fn = runner_for(compile_, depthwise)
        position = [0]

        def step_alone(runner=runner, position=position):
            images, batch_labels = in_memory[position[0] % len(in_memory)]
            position[0] += 1
            runner(to_device(images), to_device(batch_labels))

        # A compiled step: step 1 runs in dygraph (label checks), step 2 translates; neither is timed.
        step_rates[mode] = timed(args.steps, step_alone, warmup=max(args.warmup, 3 if compile_ == "true" else 0))
        print(f"training step measured: {mode} ({args.steps} steps)", flush=True)
        if mode == default_mode:
            default_runner = (runner, optimizer, schedule, model, loss_fn)
    if default_runner is None:
        default_runner = runner_for(cfg.trainer.compile, cfg.trainer.depthwise_matmul)
        default_runner = (default_runner[0], default_runner[1], default_runner[2], default_runner[4], default_runner[5])
    runner, optimizer, schedule, model, loss_fn = default_runner

    def step_in_loop():
        images, batch_labels = next(stream)
        runner(to_device(images), to_device(batch_labels))

    loop_rate = timed(args.steps, step_in_loop)
    eval_seconds, checkpoint_seconds = epoch_overheads(cfg, splits, model, loss_fn, optimizer, dataset_options)

    print(f"\n{'':<66}{'images/s':>10}")
    print(f"{'data pipeline alone (decode + augment + batch)':<66}{data_rate:>10.1f}")
    for mode, rate in step_rates.items():
        mark = " [default]" if mode == default_mode else ""
        print(f"{'training step alone: ' + mode + mark:<66}{rate:>10.1f}")
    print(f"{'training loop (both, as stage=train runs them, default step)':<66}{loop_rate:>10.1f}")
    step_rate = step_rates.get(default_mode, max(step_rates.values()))
    bound, other, ratio = (
        ("the training step", "data pipeline", data_rate / step_rate)
        if step_rate <= data_rate
        else ("the data pipeline", "training step", step_rate / data_rate)
    )
    print(f"bound by {bound}: the {other} is {ratio:.1f}x faster")
    epoch_train = len(loader) * batch / loop_rate
    evals = 1.0 / max(1, int(cfg.trainer.eval_every))
    print(
        f"per epoch ({len(loader)} steps): training ~{epoch_train:.1f} s, eval {eval_seconds:.1f} s "
        f"(every {cfg.trainer.eval_every} epoch(s): {eval_seconds * evals:.1f} s per epoch), "
        f"checkpoints/last {checkpoint_seconds:.2f} s"
    )
    if runner.skipped:
        print(f"note: {runner.skipped} step(s) had a non-finite loss or gradient (skipped)")
    return 0


def epoch_overheads(cfg, splits, model, loss_fn, optimizer, dataset_options):
    """Seconds of one eval (as ``stage=train`` runs it after an epoch) and of one ``checkpoints/last``
    write (weights, optimizer, state), into a temporary directory."""
    from recog.evaluation import Evaluator
    from recog.utils import checkpoint

    with tempfile.TemporaryDirectory() as run_dir:
        evaluator = Evaluator(splits, cfg.data, cfg.eval, options=dataset_options(cfg.data, run_dir))
        started = time.perf_counter()
        evaluator(model)
        eval_seconds = time.perf_counter() - started
        model.train()
        started = time.perf_counter()
        checkpoint.save_checkpoint(
            Path(run_dir) / "checkpoints" / "last",
            model,
            cfg,
            {"epoch": 1, "step": 1, "step_in_epoch": 0, "best": None},
            optimizer,
            loss_fn,
        )
        checkpoint_seconds = time.perf_counter() - started
    return eval_seconds, checkpoint_seconds


def against_paddleclas(
    args,
    cfg,
    reference,
    new_model,
    runner_for,
    modes,
    default_mode,
    in_memory,
    batch,
    unpacked: Path,
    loader,
    build_optimizer,
    to_device,
) -> int:
    import paddle

    from recog.losses._pairs import label_checks

    arch = import_paddleclas(args.wheel, unpacked)
    theirs, their_name = paddleclas_model(arch, cfg, int(reference.head.class_num) if reference.head else 0)
    theirs.neck, theirs.head = paddleclas_gears(arch, reference, cfg)
    copied = copy_weights(reference, theirs)
    theirs.train()
    print(
        f"PaddleClas RecModel({their_name}, neck {type(theirs.neck).__name__ if theirs.neck else None}, "
        f"head {type(theirs.head).__name__ if theirs.head else None}): {copied} tensors copied from recog's model",
        flush=True,
    )

    def bare(model, loss_fn):
        optimizer, schedule = build_optimizer(cfg, model.parameters() + loss_fn.parameters(), len(loader))

        def step(images, batch_labels):
            with label_checks(False):  # PaddleClas's losses read nothing back either
                losses = loss_fn(model(images, batch_labels), batch_labels)
            losses["loss"].backward()
            optimizer.step()
            optimizer.clear_grad()
            schedule.step()
            return losses["loss"]

        return step

    contenders = {}
    _, their_loss = new_model()
    contenders["PaddleClas RecModel, bare step"] = bare(theirs, their_loss)
    ours, our_loss = new_model()
    copy_weights(reference, ours)
    contenders["recog model, bare step"] = bare(ours, our_loss)
    default_name = None
    keep = []  # runners hold their layers
    for compile_, depthwise in modes:
        runner, optimizer, schedule, mode, model, loss_fn = runner_for(compile_, depthwise)
        keep.append(runner)
        name = f"recog StepRunner, {mode}"
        if mode == default_mode:
            default_name = name

        def step(images, batch_labels, runner=runner):
            return runner(images, batch_labels)["loss"]

        contenders[name] = step

    # The same 3 batches from the same weights; dropout reseeded identically before each step.
    check = {}
    for name, step in contenders.items():
        values = []
        for i in range(3):
            images, batch_labels = in_memory[i % len(in_memory)]
            paddle.seed(cfg.seed + i)
            values.append(float(step(to_device(images), to_device(batch_labels))))
        check[name] = values
        print(f"3 steps: {name}: losses {', '.join(f'{v:.6f}' for v in values)}", flush=True)
    base = check["PaddleClas RecModel, bare step"][-1]
    mismatched = {n: v[-1] for n, v in check.items() if abs(v[-1] - base) > args.loss_rtol * max(1.0, abs(base))}

    rates = {name: [] for name in contenders}
    names = list(contenders)
    position = [3]
    for round_index in range(args.rounds):
        order = names[round_index % len(names) :] + names[: round_index % len(names)]
        for name in order:
            started = time.perf_counter()
            for _ in range(args.round_steps):
                images, batch_labels = in_memory[position[0] % len(in_memory)]
                position[0] += 1
                contenders[name](to_device(images), to_device(batch_labels))
            rates[name].append(args.round_steps * batch / (time.perf_counter() - started))
        print(f"round {round_index + 1}/{args.rounds}: " + ", ".join(f"{rates[n][-1]:.1f}" for n in names), flush=True)

    their_rates = rates["PaddleClas RecModel, bare step"]
    print(
        f"\n{args.rounds} alternating rounds of {args.round_steps} steps, batch {batch}; step-3 loss "
        f"{'agrees' if not mismatched else 'DIFFERS for ' + ', '.join(mismatched)} "
        f"(rtol {args.loss_rtol:g} vs PaddleClas's {base:.6f})"
    )
    print(f"{'':<62}{'images/s':>10}{'ratio to PaddleClas (median, min-max)':>40}")
    for name in names:
        ratios = [ours_ / theirs_ for ours_, theirs_ in zip(rates[name], their_rates)]
        mark = " [default]" if name == default_name else ""
        spread = f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})"
        print(f"{name + mark:<62}{statistics.median(rates[name]):>10.1f}{spread:>40}")
    for name, value in mismatched.items():
        print(
            f"LOSS MISMATCH: {name}: step-3 loss {value:.6f} vs PaddleClas {base:.6f}"
            + (" (an opt-in mode)" if name != default_name and "bare" not in name else ""),
            file=sys.stderr,
        )
    # Exit 1 when what is compared or what runs by default does not compute PaddleClas's function.
    return 1 if any(name == default_name or "bare" in name for name in mismatched) else 0


if __name__ == "__main__":
    sys.exit(main())
