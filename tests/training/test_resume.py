"""resume=true: from the run alone (its saved config), what may change on resume, state.json checked
field by field, and damaged checkpoints skipped when looking for the run to resume."""

import json
import logging
import shutil

import pytest
from image_lists import write_image_lists
from tiny import TINY_MODEL

import recog
from recog.errors import ConfigError, RecogError
from recog.stages import train
from recog.training.resume import checkpoint_problem, find_run_to_resume, read_state
from recog.training.trainer import Trainer
from recog.utils import checkpoint, manifest

pytestmark = pytest.mark.xdist_group("test_resume")  # one xdist worker trains the interrupted run once

# The first run's settings: none of them are defaults, so a resume that ignored the saved config
# would build another model (a shape mismatch on loading the weights) or read another dataset.
FIRST = [
    *TINY_MODEL,
    "export.after_train=false",  # resuming is the subject, not the export at the end (tests/stages/test_export.py)
    "loss=ce_triplet",
    "trainer.steps_per_epoch=2",
    "trainer.epochs=2",
    "mlflow.enabled=false",
    "optimizer.lr=0.02",
]


@pytest.fixture(scope="module")
def lists(tmp_path_factory):
    return write_image_lists(tmp_path_factory.mktemp("resume_lists"), (("train", 40), ("query", 10)))


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory, lists):
    """An output root with one run stopped (as by Ctrl-C) in its second epoch: checkpoints/last is
    epoch 1's, unfinished."""
    root = tmp_path_factory.mktemp("interrupted")
    real_epoch = Trainer.train_epoch

    def stop_in_epoch_2(self, state):
        if state["epoch"] == 1:
            raise KeyboardInterrupt
        return real_epoch(self, state)

    Trainer.train_epoch = stop_in_epoch_2
    try:
        with pytest.raises(KeyboardInterrupt):
            train.run(
                recog.compose(FIRST + lists + [f"paths.output_root={root}"]), root / "runs" / "2026-01-01_00-00-00"
            )
    finally:
        Trainer.train_epoch = real_epoch
    return root


def _copy(interrupted, tmp_path):
    root = tmp_path / "out"
    shutil.copytree(interrupted, root)
    return root, root / "runs" / "2026-01-01_00-00-00"


@pytest.mark.slow
def test_resume_true_alone_continues_with_the_saved_config(interrupted, tmp_path):
    root, run = _copy(interrupted, tmp_path)
    best = train.run(
        recog.compose([f"paths.output_root={root}", "resume=true", "trainer.epochs=3"]), root / "runs" / "new"
    )
    state = read_state(run / "checkpoints" / "last")
    assert state["epoch"] == 3 and state["finished"] is True and state["step"] == 6  # trainer.epochs may change
    assert not (root / "runs" / "new").exists()
    saved = recog.utils.checkpoint.load_config(run / "checkpoints" / "last")
    assert saved.neck.embedding_size == 32 and saved.optimizer.lr == 0.02 and "triplet_v2" in saved.loss
    assert saved.trainer.epochs == 3 and 0.0 <= best["recall_at_1"] <= 1.0


def test_resume_refuses_overrides_that_change_the_run(interrupted, tmp_path):
    root, run = _copy(interrupted, tmp_path)
    with pytest.raises(ConfigError) as error:
        train.run(
            recog.compose(
                [f"paths.output_root={root}", "resume=true", "optimizer.lr=0.5", "seed=3", "trainer.epochs=4"]
            ),
            run,
        )
    message = str(error.value)
    assert "optimizer.lr (saved 0.02, now 0.5)" in message and "seed (saved 0, now 3)" in message
    assert "trainer.epochs" not in message.split("these overrides change it")[1].split(".")[0]
    assert read_state(run / "checkpoints" / "last")["epoch"] == 1  # nothing was trained


@pytest.mark.slow
def test_repeating_the_original_overrides_still_resumes(interrupted, tmp_path, lists):
    root, run = _copy(interrupted, tmp_path)
    train.run(recog.compose(FIRST + lists + [f"paths.output_root={root}", "resume=true"]), run)
    assert read_state(run / "checkpoints" / "last")["finished"] is True


@pytest.mark.parametrize(
    "field, value, expected",
    [
        ("epoch", -5, "'epoch' must be a whole number >= 0, got -5"),
        ("step", "7", "step must be an integer, got str"),  # a wrong type: checkpoint.load_state's check
        ("best", [1], "best must be an object or null, got list"),
        ("finished", "no", "finished must be true/false, got str"),
        ("rng", [{}, {}], "'rng' must hold one RNG state per process"),
        ("optimizer", {"LR_Scheduler": "zzz"}, "'optimizer.LR_Scheduler' must be an object, got 'zzz'"),
        ("optimizer", {"LR_Scheduler": {"last_epoch": 1.5}}, "'optimizer.LR_Scheduler.last_epoch' must be a whole"),
    ],
)
def test_a_bad_state_json_field_is_a_message_naming_it(interrupted, tmp_path, field, value, expected):
    """An edited state.json (e.g. "epoch": -5, on which the loader thread would fail) is refused by name."""
    root, run = _copy(interrupted, tmp_path)
    state_file = run / "checkpoints" / "last" / "state.json"
    state = json.loads(state_file.read_text())
    state[field] = value
    state_file.write_text(json.dumps(state))
    manifest.write_manifest(state_file.parent, checkpoint.KIND)  # edited, not damaged: the manifest agrees
    with pytest.raises(RecogError, match="state.json") as error:
        train.run(recog.compose([f"paths.output_root={root}", "resume=true"]), run)
    assert expected in str(error.value)


@pytest.mark.slow
def test_damaged_checkpoints_are_skipped_when_looking_for_the_run_to_resume(interrupted, tmp_path, caplog):
    """A damaged checkpoint anywhere under outputs/runs does not stop resume=true from finding an intact one."""
    root, good = _copy(interrupted, tmp_path)
    truncated = root / "runs" / "2026-01-02_00-00-00"
    garbage = root / "runs" / "2026-01-03_00-00-00"
    for damaged in (truncated, garbage):
        shutil.copytree(good, damaged)
    model = truncated / "checkpoints" / "last" / "model.safetensors"
    model.write_bytes(model.read_bytes()[:-100])
    (garbage / "checkpoints" / "last" / "state.json").write_text("{not json")
    assert checkpoint_problem(good / "checkpoints" / "last") is None
    assert "truncated" in checkpoint_problem(truncated / "checkpoints" / "last")
    assert "damaged" in checkpoint_problem(garbage / "checkpoints" / "last")  # by its manifest

    cfg = recog.compose([f"paths.output_root={root}", "resume=true"])
    with caplog.at_level(logging.WARNING, logger="recog.training.resume"):
        assert find_run_to_resume(cfg, root / "runs" / "new") == good
    warned = caplog.text
    assert str(truncated) in warned and str(garbage) in warned and "damaged" in warned
    train.run(cfg, root / "runs" / "new")  # and the run continues
    assert read_state(good / "checkpoints" / "last")["finished"] is True

    with pytest.raises(RecogError, match=r"cannot resume .*truncated"):  # named explicitly: an error, not a skip
        find_run_to_resume(cfg, truncated)


@pytest.mark.slow
def test_the_command_printed_on_sigterm_resumes_the_run_alone(tmp_path, run_cli):
    """run.py end to end: SIGTERM mid-epoch (to a real process) prints the exact command that continues
    the run, which needs no other override; a changed setting on resume is one message listing it."""
    import os
    import re
    import signal

    from commands import ROOT, reached, start_py, stop, wait_for

    lists = write_image_lists(tmp_path / "lists", (("train", 200), ("query", 10)))
    run_dir = tmp_path / "out" / "runs" / "first"
    progress = tmp_path / "progress.json"
    args = [
        *FIRST[:-4],
        "trainer.epochs=2",
        "trainer.log_every=1",
        "mlflow.enabled=false",
        *lists,
        f"paths.output_root={tmp_path / 'out'}",
        f"hydra.run.dir={run_dir}",
        f"trainer.progress_file={progress}",
    ]
    log = tmp_path / "first.log"
    proc = start_py(args, log)
    try:
        wait_for(lambda: reached(progress, epoch=1, step_in_epoch=3), 120, "3 steps of epoch 1", proc, log)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    finally:
        stop(proc)
    output = log.read_text(errors="replace")
    assert code == 143, output[-2000:]
    command = re.search(r"continue with: (\S+ run\.py resume=true hydra\.run\.dir=\S+)", output).group(1)
    python, rest = command.split(" ", 1)
    assert rest == f"run.py resume=true hydra.run.dir={run_dir}"
    assert python == "python" or os.access(ROOT / python, os.X_OK)  # the interpreter that ran it: no venv to activate

    changed = run_cli(*command.split()[2:], "data.image_size=32")  # python run.py ARGS, in this process
    said = changed.stdout + changed.stderr
    assert changed.returncode == 2 and "data.image_size (saved 16, now 32)" in said, said[-2000:]

    resumed = run_cli(*command.split()[2:])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    state = read_state(run_dir / "checkpoints" / "last")
    assert state["finished"] is True and state["epoch"] == 2 and state["step"] == 2 * 25  # 200 images, batch 8


def test_a_null_class_num_on_resume_means_the_one_the_run_filled_in(interrupted, tmp_path, lists):
    """head.class_num=null follows the dataset: the saved config holds the number the run filled in.
    With a command line (run.py), every key under an overridden group counts as set."""
    from recog.training.resume_config import resume_config

    root, run = _copy(interrupted, tmp_path)
    overrides = FIRST + lists + ["head=arcmargin", f"paths.output_root={root}", "resume=true"]
    resumed = resume_config(recog.compose(overrides), run, overrides)
    assert resumed.head.class_num == 5 and resumed.neck.embedding_size == 32
    with pytest.raises(ConfigError, match=r"head.margin \(saved 0.2, now 0.3\)"):
        resume_config(recog.compose(overrides + ["head.margin=0.3"]), run, overrides + ["head.margin=0.3"])


@pytest.fixture(scope="module")
def two_of_three(tmp_path_factory, lists):
    """A run of 3 epochs (evaluated after the last only) stopped in its third: 2 epochs trained, no eval yet."""
    root = tmp_path_factory.mktemp("two_of_three")
    real_epoch = Trainer.train_epoch

    def stop_in_epoch_3(self, state):
        if state["epoch"] == 2:
            raise KeyboardInterrupt
        return real_epoch(self, state)

    Trainer.train_epoch = stop_in_epoch_3
    try:
        with pytest.raises(KeyboardInterrupt):
            overrides = FIRST + lists + ["trainer.epochs=3", "trainer.eval_every=3"]
            train.run(recog.compose(overrides + [f"paths.output_root={root}"]), root / "runs" / "2026-01-01_00-00-00")
    finally:
        Trainer.train_epoch = real_epoch
    return root


def test_resume_with_fewer_epochs_than_trained_is_refused_before_any_work(two_of_three, tmp_path):
    root, run = _copy(two_of_three, tmp_path)
    before = (run / "checkpoints" / "last" / "state.json").read_text()
    with pytest.raises(ConfigError) as error:
        train.run(recog.compose([f"paths.output_root={root}", "resume=true", "trainer.epochs=1"]), run)
    message = str(error.value)
    assert f"{run} has trained 2 epoch(s), and trainer.epochs=1 ends before that" in message
    assert "give trainer.epochs=2 or more" in message
    assert (run / "checkpoints" / "last" / "state.json").read_text() == before
    assert not (run / "best_model").exists() and not (run / ".recog.lock").exists()


@pytest.mark.slow
def test_resume_with_the_epochs_already_trained_ends_the_run_there(two_of_three, tmp_path):
    """trainer.epochs lowered to the epochs done: the last of them is evaluated (it was not: eval_every=3),
    the best model saved and the checkpoint marked finished."""
    root, run = _copy(two_of_three, tmp_path)
    assert read_state(run / "checkpoints" / "last")["best"] is None
    best = train.run(recog.compose([f"paths.output_root={root}", "resume=true", "trainer.epochs=2"]), run)
    state = read_state(run / "checkpoints" / "last")
    assert state["finished"] is True and state["epoch"] == 2 and state["step"] == 4  # nothing more trained
    assert best["epoch"] == 2 and state["best"] == best
    assert (run / "best_model" / "model.safetensors").is_file()
    assert json.loads((run / "metrics.json").read_text()) == best


def test_a_named_run_dir_without_a_checkpoint_is_not_swapped_for_another_run(interrupted, tmp_path):
    """resume=true hydra.run.dir=D, D without a checkpoint, resumed the newest unfinished run under
    outputs/runs and overwrote its best model: naming a run dir means that run."""
    from recog.cli import precheck
    from recog.utils import manifest as manifests

    root, other = _copy(interrupted, tmp_path)
    before = manifests.sha256_of(other / "checkpoints" / "last" / "model.safetensors")
    named = tmp_path / "named"
    cfg = recog.compose([f"paths.output_root={root}", "resume=true"])
    with pytest.raises(ConfigError, match=rf"hydra.run.dir={named}: that run dir holds no checkpoint to resume"):
        find_run_to_resume(cfg, named, named=True)
    with pytest.raises(ConfigError, match="holds no checkpoint to resume"):  # run.py: before Hydra writes D
        precheck([f"paths.output_root={root}", "resume=true", f"hydra.run.dir={named}", "mlflow.enabled=false"])
    assert not named.exists()
    assert find_run_to_resume(cfg, named, named=False) == other  # not named: the newest unfinished run
    assert manifests.sha256_of(other / "checkpoints" / "last" / "model.safetensors") == before


def test_the_hydra_job_says_whether_the_run_dir_was_named(tmp_path, monkeypatch):
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from recog.training.resume import run_dir_named

    assert run_dir_named() is False  # the Python API: no Hydra job
    for overrides, named in (([f"hydra.run.dir={tmp_path}", "hydra.mode=RUN"], True), (["hydra.mode=RUN"], False)):
        job = OmegaConf.create({"overrides": {"hydra": overrides}})  # what HydraConfig.get() holds in a run.py job
        monkeypatch.setattr(HydraConfig, "get", staticmethod(lambda job=job: job))
        assert run_dir_named() is named


USER_NECK = """
from recog.models.necks.fc import FCNeck


class UserNeck(FCNeck):
    pass
"""


def test_a_run_trained_with_trusted_targets_resumes_with_them(interrupted, tmp_path, monkeypatch):
    """The hint asked for trusted_targets=[...] although the command gave it: resume now passes it on
    to every reader of the saved config (the search for the run, its check, the resumed config)."""
    from recog.training.resume_config import resume_config
    from recog.utils import manifest as manifests

    root, run = _copy(interrupted, tmp_path)
    module = f"user_neck_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{module}.py").write_text(USER_NECK)
    monkeypatch.syspath_prepend(str(tmp_path))
    last = run / "checkpoints" / "last"
    config = last / "config.yaml"
    config.write_text(config.read_text().replace("recog.models.necks.FCNeck", f"{module}.UserNeck"))
    manifests.write_manifest(last, "checkpoint")  # as if trained with neck._target_=<module>.UserNeck
    with pytest.raises(RecogError, match=rf"trusted_targets=\[{module}.UserNeck\]"):
        find_run_to_resume(recog.compose([f"paths.output_root={root}", "resume=true"]), run)
    overrides = [f"paths.output_root={root}", "resume=true", f"trusted_targets=[{module}.UserNeck]"]
    cfg = recog.compose(overrides)
    assert find_run_to_resume(cfg, run) == run
    assert find_run_to_resume(cfg, root / "runs" / "new", named=False) == run
    resumed = resume_config(cfg, run, overrides)  # trusted_targets is not a change of the run
    assert resumed.neck._target_ == f"{module}.UserNeck" and list(resumed.trusted_targets) == [f"{module}.UserNeck"]
    assert type(recog.build_model(resumed).neck).__name__ == "UserNeck"
