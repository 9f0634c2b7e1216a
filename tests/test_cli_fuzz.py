"""A CLI fuzzer: random command lines either run or end in recog's own error, never anything else.

Each example is a command line as ``run.py`` gets it: a stage, config-group options, values in
and out of range for the numbers recog checks, and hostile list files (a byte-order mark,
latin-1, UTF-16, CRLF, duplicates, ``../`` and absolute paths, missing images, bad labels,
extra fields, control characters). It runs in-process like ``run.py`` runs it: ``precheck``
(the checks before Hydra), then

* ``stage=predict``: the whole stage, on a tiny export;
* ``stage=train`` with ``run=true``: the whole stage with tiny settings appended last (one step);
* ``stage=train`` otherwise, ``eval``, ``export``: what the stage reads and builds before its
  first step (the dataset lists, the model and loss, one forward and loss on a P x K batch;
  the saved config of ``model_path``), which is where bad input must be stopped.

It fails on any exception that is not a ``recog.errors.RecogError``, on an error message that is
not one paragraph, and on a run that neither succeeds (with its outputs written) nor reports.

Profiles (hypothesis, fixed seed): ``ci`` (default, ~40 examples, under a minute on 2 free cores)
and ``nightly`` (``RECOG_FUZZ_PROFILE=nightly``: 600 examples, more real trainings, shrinking);
``RECOG_FUZZ_EXAMPLES=N`` sets the count, ``RECOG_FUZZ_VERBOSE=1`` prints the messages seen.
"""

import os
import time
from pathlib import Path

import numpy as np
import paddle
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from image_lists import write_image_lists

import recog
from recog.api import load_splits
from recog.cli import precheck
from recog.errors import RecogError
from recog.inference.export import export_model
from recog.stages import predict, train
from recog.utils import checkpoint

PROFILE = os.environ.get("RECOG_FUZZ_PROFILE", "ci")
settings.register_profile(
    "ci",
    max_examples=40,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
    phases=[Phase.explicit, Phase.generate],
)  # a failure shows its example, unshrunk
settings.register_profile(
    "nightly", max_examples=600, derandomize=True, deadline=None, database=None, suppress_health_check=list(HealthCheck)
)
FUZZ = settings(
    settings.get_profile(PROFILE),
    max_examples=int(os.environ.get("RECOG_FUZZ_EXAMPLES", 0)) or settings.get_profile(PROFILE).max_examples,
)
TRAIN_RUN_WEIGHT = 1 if PROFILE == "ci" else 4  # of 20: real (tiny) trainings are the slow examples
TINY = [
    "trainer.epochs=1",
    "trainer.steps_per_epoch=1",
    "data.image_size=16",
    "backbone.scale=0.25",
    "data.num_workers=0",
    "eval.engine=dygraph",
    "data.batch_size=8",
    "data.samples_per_class=2",
    "data.eval_batch_size=64",
    "export.after_train=false",
]
STATS = {"examples": 0, "reported": 0, "succeeded": 0, "by_stage": {}, "messages": {}}

GROUPS = {
    "backbone": ["pplcnet", "resnet_vd", "vision_resnet", "vision_mobilenetv3", "nope"],
    "neck": ["fc", "bnneck", "tanh", "fpn", "none"],
    "head": ["fc", "arcmargin", "cosmargin", "circlemargin", "none"],
    "loss": [
        "ce",
        "triplet",
        "ce_triplet",
        "trihard",
        "ce_center",
        "supcon",
        "msm",
        "npairs",
        "eml",
        "pairwise_cosface",
        "xbm",
        "dch",
        "dshsd",
        "lcdsh",
        "triplet_v1",
    ],
    "optimizer": ["momentum", "adamw"],
    "lr": ["warmup_cosine", "multi_step"],
}
NUMBERS = {  # key: values in and out of range
    "trainer.eval_every": ["1", "2", "0", "-1"],
    "trainer.epochs": ["1", "0", "-3"],
    "trainer.steps_per_epoch": ["1", "null", "0", "-2"],
    "trainer.log_every": ["1", "0"],
    "trainer.grad_clip": ["null", "1.0", "0", "-1", "nan"],
    "eval.recall_at": ["[1]", "[1,5]", "[0]", "[]", "[-1,2]", "[1000]"],
    "neck.embedding_size": ["8", "1", "0", "-4"],
    "head.class_num": ["null", "5", "0", "-1", "3"],
    "head.margin": ["0.2", "-1.0", "nan"],
    "head.scale": ["30.0", "0.0"],
    "predict.batch_size": ["1", "3", "0", "-1"],
    "predict.top_k": ["1", "5", "0", "100"],
    "predict.picture_queries": ["0", "2", "-1"],
    "predict.index": ["flat", "ivf", "hnsw", "lsh"],
    "export.tolerance": ["1e-4", "0", "-1", "inf"],
    "export.check_images": ["1", "0"],
    "mlflow.request_timeout": ["1", "0"],
    "mlflow.request_retries": ["0", "-1"],
    "mlflow.experiment_name": ["fuzz", "''", "x" * 600],
    "launcher.nproc_per_node": ["1", "0"],
    "launcher.node_rank": ["null", "0", "5"],
    "data.image_size": ["16", "0", "99999"],
    "data.batch_size": ["8", "0", "7"],
    "data.samples_per_class": ["2", "0", "3", "100"],
    "data.on_bad_image": ["skip", "fail", "maybe"],
    "optimizer.lr": ["0.01", "0.0", "-1.0", "nan"],
    "seed": ["0", "-1", "4294967296"],
}
LINES = [  # list lines, {i} an image of the tiny dataset, {c} a class
    "img/train_{i}.png {c}",
    "img/train_{i}.png {c}",
    "img/train_{i}.png {c}",
    "img/train_{i}.png",
    "img/train_{i}.png -1",
    "img/train_{i}.png one",
    "img/train_{i}.png {c} extra",
    "img/missing_{i}.png {c}",
    "../outside.png {c}",
    "/etc/hostname {c}",
    "img/tr\x07ain.png {c}",
    "",
    "# a comment",
    "img/caf\u00e9.png {c}",
    "img/train_{i}.png 99999999999",
    "  img/train_{i}.png\t{c}  ",
    "img/" + "x" * 300 + ".png 1",
]
ENCODINGS = ["utf-8", "utf-8-sig", "latin-1", "utf-16", "crlf"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny image-list dataset, a tiny export and a tiny trained best_model, shared by the examples."""
    root = tmp_path_factory.mktemp("fuzz")
    data = root / "data"
    dataset = write_image_lists(data, (("train", 40), ("query", 10), ("gallery", 10)), classes=4)
    cfg = recog.compose(
        [
            "backbone.scale=0.25",
            "data.image_size=16",
            "neck.embedding_size=8",
            "head.class_num=4",
            f"paths.output_root={root}",
        ]
    )
    images = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)
    export_model(recog.build_model(cfg), cfg, root / "export", images, cpu_onednn="full")
    trained = root / "trained"
    train.run(recog.compose([*dataset, *TINY, "mlflow.enabled=false", f"paths.output_root={root}"]), trained)
    (root / "garbage_model").mkdir()
    (root / "garbage_model" / "config.yaml").write_text("backbone: {_target_: os.system}\n")
    (root / "garbage_model" / "model.safetensors").write_bytes(b"\x00" * 10)
    return {"root": root, "data": data, "export": root / "export", "model": trained / "best_model", "count": 0}


@st.composite
def list_files(draw, world_dir: Path, name: str) -> str:
    """A list file with drawn lines and encoding; returns its path."""
    lines = draw(st.lists(st.sampled_from(LINES), min_size=0, max_size=8))
    count = draw(st.integers(1, 12))
    text_lines = [line.format(i=i % 40, c=i % 4) for i, line in enumerate(lines)][:count] or [""]
    if draw(st.booleans()):  # a duplicate
        text_lines.append(text_lines[0])
    encoding = draw(st.sampled_from(ENCODINGS))
    text = ("\r\n" if encoding == "crlf" else "\n").join(text_lines) + "\n"
    data = text.encode("utf-8" if encoding == "crlf" else encoding, errors="replace")
    path = world_dir / f"{name}.txt"
    path.write_bytes(data)
    return str(path)


@st.composite
def commands(draw, world: dict) -> tuple:
    """``(kind, argv)``: kind is the stage, or ``train_run`` for a real tiny training."""
    kind = draw(
        st.sampled_from(
            ["train"] * 8 + ["train_run"] * TRAIN_RUN_WEIGHT + ["eval"] * 2 + ["export"] * 2 + ["predict"] * 6
        )
    )
    stage = "train" if kind == "train_run" else kind
    argv = [f"stage={stage}", "mlflow.enabled=false", f"paths.output_root={world['root'] / 'out'}"]
    for group, options in GROUPS.items():
        if draw(st.integers(0, 3)) == 0:
            argv.append(f"{group}={draw(st.sampled_from(options))}")
    for key in draw(st.lists(st.sampled_from(sorted(NUMBERS)), max_size=3, unique=True)):
        values = NUMBERS[key]
        in_range = draw(st.integers(0, 2)) > 0  # two in three: the first value, in range
        argv.append(f"{key}={values[0] if in_range else draw(st.sampled_from(values[1:]))}")
    data = world["data"]
    if stage == "train":
        hostile = draw(st.sampled_from(["train", "query", "none", "none"]))
        lists = {name: f"{name}.txt" for name in ("train", "query", "gallery")}
        if hostile != "none":
            lists[hostile] = Path(draw(list_files(data, f"fuzz_{hostile}"))).name
        argv += ["dataset=image_list", f"dataset.root={data}"] + [f"dataset.{n}_list={f}" for n, f in lists.items()]
    elif stage in ("eval", "export"):
        model = draw(
            st.sampled_from([world["model"]] * 3 + [None, world["root"] / "garbage_model", world["root"] / "nope"])
        )
        if model is not None:
            argv.append(f"model_path={model}")
    else:
        model_dir = draw(st.sampled_from([world["export"]] * 4 + [world["root"] / "nope", data]))
        argv.append(f"predict.model_dir={model_dir}")
        source = draw(st.sampled_from(["clean", "list", "list", "folder", "missing"]))
        spec = {
            "clean": lambda: str(data / "query.txt"),
            "list": lambda: draw(list_files(data, "fuzz_input")),
            "folder": lambda: str(data / "img"),
            "missing": lambda: str(data / "nope.txt"),
        }[source]()
        argv.append(f"predict.input={spec}")
        if draw(st.booleans()):
            clean = draw(st.booleans())
            argv.append(f"predict.gallery={data / 'gallery.txt' if clean else draw(list_files(data, 'fuzz_gallery'))}")
    if kind == "train_run":
        argv += TINY
    return kind, argv


def run_in_process(kind: str, argv: list, run_dir: Path):
    """What run.py does with ``argv``, with a tiny budget (module docstring)."""
    cfg = precheck(argv)  # the checks before Hydra, and the composed config
    if kind == "predict":
        summary = predict.run(cfg, run_dir)
        assert (run_dir / "manifest.tsv").is_file() and summary["extracted"] + summary["failed"] == summary["images"]
        if cfg.predict.gallery:
            assert (run_dir / "results.json").is_file()
        return
    if kind == "train_run":
        metrics = train.run(cfg, run_dir)
        assert (run_dir / "best_model" / checkpoint.MODEL_FILE).is_file() and "recall_at_1" in metrics
        return
    if kind in ("eval", "export"):
        trained = checkpoint.load_config(cfg.model_path)
        recog.build_model(trained)
        return
    splits = load_splits(cfg)  # train: everything before the first step
    classes = splits.num_train_classes
    model = recog.build_model(cfg, class_num=classes)
    loss = recog.build_loss(cfg, class_num=classes, embedding_size=model.embedding_size)
    k = cfg.data.samples_per_class
    batch = min(cfg.data.batch_size, 8) // k * k or k
    labels = paddle.to_tensor(np.repeat(np.arange(batch // k) % classes, k).astype(np.int64))
    size = min(cfg.data.image_size, 64)
    model.train()
    loss(model(paddle.rand([len(labels), 3, size, size]), labels), labels)


def check_one(world: dict, kind: str, argv: list) -> None:
    world["count"] += 1
    run_dir = world["root"] / "runs" / str(world["count"])
    STATS["examples"] += 1
    STATS["by_stage"][kind] = STATS["by_stage"].get(kind, 0) + 1
    try:
        run_in_process(kind, argv, run_dir)
    except RecogError as error:
        message = str(error)
        assert message.strip() and "Traceback" not in message, (argv, message)
        assert "\n\n" not in message.strip(), (argv, message)
        STATS["reported"] += 1
        what = " ".join(message.split()[:6])
        STATS["messages"][what] = STATS["messages"].get(what, 0) + 1
        return
    STATS["succeeded"] += 1


@pytest.mark.slow
def test_cli_fuzz(world):
    """Random command lines (module docstring): success, or a RecogError with one paragraph."""
    started = time.perf_counter()

    @FUZZ
    @given(st.data())
    def examples(data):
        kind, argv = data.draw(commands(world))
        check_one(world, kind, argv)

    examples()
    elapsed = time.perf_counter() - started
    print(
        f"\nCLI fuzz ({PROFILE}): {STATS['examples']} examples in {elapsed:.1f} s: {STATS['succeeded']} ran, "
        f"{STATS['reported']} reported; by stage {STATS['by_stage']}"
    )
    if os.environ.get("RECOG_FUZZ_VERBOSE"):
        for what, count in sorted(STATS["messages"].items(), key=lambda kv: -kv[1]):
            print(f"{count:4d}  {what}")
    assert STATS["succeeded"] and STATS["reported"], STATS  # both outcomes are exercised
