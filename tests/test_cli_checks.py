"""run.py's checks before Hydra starts: one message, exit 2, no run folder (``recog.app.main`` in this process)."""

import pytest
from commands import cli

from recog.cli import config_groups, help_text, precheck, top_level_keys
from recog.errors import ConfigError


@pytest.mark.slow
def test_cfg_job_gets_recogs_override_checks(capfd):
    result = cli("--cfg", "job", "backbone.scael=1.0", capfd=capfd)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "recog: Key 'scael' is not an argument of recog.models.backbones.PPLCNet; valid keys in backbone: "
        + result.stderr.split("valid keys in backbone: ")[1].strip()
    ]
    with pytest.raises(ConfigError, match="trainer.epochs must be at least 1"):
        precheck(["--cfg", "job", "trainer.epochs=0"])
    with pytest.raises(ConfigError, match="trainer.eval_every must be at least 1"):
        precheck(["-c", "all", "--resolve", "trainer.eval_every=0"])


def test_adding_an_unknown_key_is_refused_with_the_valid_keys():
    with pytest.raises(ConfigError) as caught:
        precheck(["+foo=1"])
    message = str(caught.value)
    assert "no schema has the key 'foo'" in message and ", ".join(top_level_keys()) in message
    with pytest.raises(ConfigError, match="data has no key 'foo'; valid keys in data: image_size"):
        precheck(["++data.foo=1"])
    with pytest.raises(ConfigError, match="no schema has the key 'foo'"):
        precheck(["--cfg", "job", "+foo=1"])


@pytest.mark.slow
def test_help_is_recogs_own(capfd):
    result = cli("--help", capfd=capfd)
    assert result.returncode == 0
    assert result.stdout == help_text().replace("$$", "$") + "\n"
    assert "schema/" not in result.stdout and "Stages:" in result.stdout
    for group in config_groups():
        assert f"\n  {group} " in result.stdout
    assert "stage=predict" in result.stdout and "README.md" in result.stdout


@pytest.mark.slow
def test_rejected_stage_leaves_no_run_folder(tmp_path, capfd):
    result = cli("stage=eval", f"paths.output_root={tmp_path}", capfd=capfd)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == "recog: stage=eval needs a trained model: model_path=<run dir>/best_model"
    assert list(tmp_path.iterdir()) == []  # no outputs/runs/<date> folder
    for argv, message in (
        (["stage=export", f"model_path={tmp_path / 'nope'}"], "does not exist or is not a directory"),
        (["stage=predict"], "stage=predict needs an export"),
        (["stage=predict", f"predict.model_dir={tmp_path}"], "stage=predict needs images"),
        (
            ["stage=predict", f"predict.model_dir={tmp_path}", f"predict.input={tmp_path / 'x'}"],
            "is neither a folder nor a list file",
        ),
    ):
        with pytest.raises(ConfigError, match=message):
            precheck(argv + [f"paths.output_root={tmp_path}"])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "override", ["paths.output_root=/proc/recog", "hydra.run.dir=/proc/recog/run", "paths.output_root=/sys/recog"]
)
def test_unwritable_output_is_one_message(override):
    with pytest.raises(ConfigError, match="is not writable: cannot create a folder in /(proc|sys)"):
        precheck([override])


@pytest.mark.slow
def test_output_under_a_file_is_one_message(tmp_path, capfd):
    (tmp_path / "file").write_text("x")
    result = cli(f"paths.output_root={tmp_path / 'file' / 'out'}", capfd=capfd)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert (
        f"paths.output_root={tmp_path / 'file' / 'out'} cannot be created: {tmp_path / 'file'} is a file"
        in result.stderr
    )


def test_writable_output_passes_and_creates_nothing(tmp_path):
    precheck([f"paths.output_root={tmp_path / 'a' / 'b'}", "trainer.epochs=1"])
    precheck(["-m", f"paths.output_root={tmp_path}", "head.margin=0.1,0.2"])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_stage_refusing_its_input_removes_the_run_folder_hydra_made(tmp_path, capfd):
    result = cli(
        "dataset=image_list",
        f"dataset.root={tmp_path / 'none'}",
        "dataset.train_list=t.txt",
        "dataset.query_list=q.txt",
        f"paths.output_root={tmp_path / 'out'}",
        capfd=capfd,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"dataset root {tmp_path / 'none'} does not exist" in result.stdout + result.stderr
    assert list((tmp_path / "out" / "runs").iterdir()) == []  # Hydra made one; the refusal removed it


def test_a_run_folder_with_work_in_it_is_kept(tmp_path):
    from recog.cli import remove_untouched_run_dir

    (tmp_path / "a" / ".hydra").mkdir(parents=True)
    (tmp_path / "a" / "run.log").write_text("")
    (tmp_path / "b" / ".hydra").mkdir(parents=True)
    (tmp_path / "b" / "run.log").write_text("[INFO] - RecModel: 901 train images\n")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "metrics.json").write_text("{}")
    assert [remove_untouched_run_dir(tmp_path / n) for n in "abc"] == [True, False, False]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "c"]


def test_swept_stage_inputs_are_left_to_the_jobs(tmp_path):
    (tmp_path / "m1").mkdir()
    precheck(["-m", "stage=eval", f"model_path={tmp_path / 'm1'},{tmp_path / 'm2'}", f"paths.output_root={tmp_path}"])
    with pytest.raises(ConfigError, match="stage=eval needs a trained model"):
        precheck(["-m", "stage=eval", "head.margin=0.1,0.2", f"paths.output_root={tmp_path}"])


def test_training_a_loss_on_logits_without_a_head_is_refused_before_the_run(tmp_path):
    # found by tests/test_cli_fuzz.py: head=none loss=ce started training, then failed at the first step (KeyError)
    with pytest.raises(ConfigError, match="loss term 'ce' reads the head's logits, but head=none"):
        precheck(["head=none", "loss=ce", f"paths.output_root={tmp_path}"])
    precheck(["head=none", "loss=triplet", f"paths.output_root={tmp_path}"])
    precheck(
        [
            "stage=predict",
            "head=none",
            f"predict.model_dir={tmp_path}",
            f"predict.input={tmp_path}",
            f"paths.output_root={tmp_path}",
        ]
    )  # no training: no loss needed


@pytest.mark.parametrize("argv", [["hydra.run.dir="], ["-m", "hydra.sweep.dir=", "seed=1,2"]])
def test_an_empty_run_dir_is_refused_not_the_current_folder(argv, tmp_path):
    """hydra.run.dir= trained into the current folder."""
    with pytest.raises(ConfigError, match=r"hydra\.(run|sweep)\.dir is empty: it would make the current folder"):
        precheck(argv + [f"paths.output_root={tmp_path}"])


def test_a_run_dir_name_too_long_for_the_file_system_is_one_message(tmp_path):
    """A 300-character run dir was an OSError traceback (File name too long)."""
    with pytest.raises(ConfigError, match=r"hydra.run.dir: the name 'xxx.*' is 300 bytes long; .* at most 223"):
        precheck([f"hydra.run.dir={tmp_path / ('x' * 300)}", f"paths.output_root={tmp_path}"])
    precheck([f"hydra.run.dir={tmp_path / ('x' * 200)}", f"paths.output_root={tmp_path}"])
    with pytest.raises(ConfigError, match="predict.output_dir: the name"):
        precheck(_predict(tmp_path) + [f"predict.output_dir={tmp_path / ('y' * 300)}"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "in"]


def _predict(tmp_path):
    (tmp_path / "export").mkdir(exist_ok=True)
    (tmp_path / "in").mkdir(exist_ok=True)
    return [
        "stage=predict",
        f"predict.model_dir={tmp_path / 'export'}",
        f"predict.input={tmp_path / 'in'}",
        f"paths.output_root={tmp_path}",
    ]


def test_an_unwritable_predict_output_dir_is_one_message(tmp_path):
    """predict.output_dir on a read-only file system was an OSError traceback."""
    from recog.api import compose
    from recog.stages.predict import check_ready

    with pytest.raises(ConfigError, match="predict.output_dir=/proc/recog/out is not writable"):
        precheck(_predict(tmp_path) + ["predict.output_dir=/proc/recog/out"])
    with pytest.raises(ConfigError, match="predict.output_dir=/proc/recog/out is not writable"):  # the stage itself
        check_ready(compose(_predict(tmp_path) + ["predict.output_dir=/proc/recog/out"]))


@pytest.mark.parametrize("required", ["true", "false"])
def test_an_unwritable_sqlite_store_is_one_message_at_once(tmp_path, required):
    """MLflow retried a read-only SQLite file for 105 s, then raised a traceback, also with mlflow.required=false."""
    from recog.api import compose
    from recog.tracking import check_reachable

    argv = ["mlflow.tracking_uri=sqlite:////proc/recog/m.db", f"mlflow.required={required}"]
    with pytest.raises(ConfigError, match=r"mlflow.tracking_uri's folder=/proc/recog is not writable"):
        precheck(argv + [f"paths.output_root={tmp_path}"])
    with pytest.raises(ConfigError, match=r"mlflow.tracking_uri's folder=/proc/recog is not writable"):
        check_reachable(compose(argv + [f"paths.output_root={tmp_path}"]))  # what every stage checks first
    (tmp_path / "db").mkdir()
    with pytest.raises(ConfigError, match="is a folder, not a SQLite file"):
        precheck([f"mlflow.tracking_uri=sqlite:///{tmp_path / 'db'}", f"paths.output_root={tmp_path}"])
    precheck([f"mlflow.tracking_uri=sqlite:///{tmp_path / 'new' / 'm.db'}", f"paths.output_root={tmp_path}"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["db"]


def test_more_loader_workers_than_the_machine_can_use_are_refused(tmp_path):
    """data.num_workers=100000 forked until the machine ran out of memory (840 orphans)."""
    from recog.data import build_eval_loader
    from recog.data.loader import max_workers

    with pytest.raises(ConfigError, match=rf"data.num_workers=100000 .* at most {max_workers()} here"):
        precheck(["data.num_workers=100000", f"paths.output_root={tmp_path}"])
    with pytest.raises(ConfigError, match="data.num_workers=100000"):
        precheck(["stage=eval", f"model_path={tmp_path}", "data.num_workers=100000", f"paths.output_root={tmp_path}"])
    with pytest.raises(ConfigError, match="data.num_workers=100000"):  # the loaders check it too (the Python API)
        build_eval_loader([], None, batch_size=1, num_workers=100000)
    precheck([f"data.num_workers={max_workers()}", f"paths.output_root={tmp_path}"])
    assert max_workers() >= 8


class _Launched(Exception):
    """Raised instead of starting ``paddle.distributed.launch`` / Hydra in these tests."""


def test_a_rank_skips_the_precheck_only_of_the_command_its_launcher_checked(tmp_path, monkeypatch):
    import os

    import recog.app
    from recog.distributed import launch

    for name in ("PADDLE_TRAINER_ID", "PADDLE_TRAINERS_NUM", launch.PRECHECKED_ENV):
        monkeypatch.delenv(name, raising=False)
    started = {}

    def become_launcher(command, env):
        started.update(command=command, env=env)
        raise _Launched

    monkeypatch.setattr(launch, "become_launcher", become_launcher)
    argv = ["stage=train", "launcher.nproc_per_node=2", f"paths.output_root={tmp_path}", "trainer.epochs=1"]
    with pytest.raises(_Launched):
        recog.app.main(argv)  # the launcher: prechecks, then would start the ranks
    rank_args = started["command"][started["command"].index(recog.app.SCRIPT) + 1 :]
    assert "launcher.nproc_per_node=2" not in rank_args and any(a.startswith("hydra.run.dir=") for a in rank_args)
    assert started["env"][launch.PRECHECKED_ENV] == launch.precheck_marker(rank_args, os.getpid())

    # A rank of that launcher (its parent), with the launcher's environment.
    monkeypatch.setattr(os, "getppid", os.getpid)
    monkeypatch.setenv("PADDLE_TRAINER_ID", "1")
    monkeypatch.setenv("PADDLE_TRAINERS_NUM", "2")
    monkeypatch.setenv(launch.PRECHECKED_ENV, started["env"][launch.PRECHECKED_ENV])
    prechecked = []
    monkeypatch.setattr(recog.app, "precheck", prechecked.append)

    def prepare_argv(args, **kwargs):
        raise _Launched  # where the rank's Hydra run would start

    monkeypatch.setattr(launch, "prepare_argv", prepare_argv)
    with pytest.raises(_Launched):
        recog.app.main(rank_args)
    assert prechecked == []  # the launcher checked exactly this command line
    assert launch.prechecked_by_launcher(rank_args)

    # Any other command line, parent, or a process the launcher did not start: checked as usual.
    with pytest.raises(_Launched):
        recog.app.main(rank_args + ["seed=1"])
    assert prechecked == [rank_args + ["seed=1"]]
    assert not launch.prechecked_by_launcher(rank_args[:-1])
    monkeypatch.setattr(os, "getppid", lambda: os.getpid() + 1)
    assert not launch.prechecked_by_launcher(rank_args)
    monkeypatch.setattr(os, "getppid", os.getpid)
    monkeypatch.delenv("PADDLE_TRAINERS_NUM")
    assert not launch.prechecked_by_launcher(rank_args)
    monkeypatch.setenv("PADDLE_TRAINERS_NUM", "2")
    monkeypatch.setenv(launch.PRECHECKED_ENV, "1")
    assert not launch.prechecked_by_launcher(rank_args)


def test_a_launch_command_does_not_pass_on_a_precheck_marker_it_did_not_make(tmp_path, monkeypatch):
    from recog.distributed import launch

    monkeypatch.setenv(launch.PRECHECKED_ENV, "stale")
    launcher, run_dir = launch.launch_settings(["launcher.nproc_per_node=2", f"paths.output_root={tmp_path}"])
    _, env = launch.launch_command(["launcher.nproc_per_node=2"], launcher, run_dir, "run.py")
    assert launch.PRECHECKED_ENV not in env
