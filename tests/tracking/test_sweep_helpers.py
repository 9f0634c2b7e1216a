"""Pieces of the sweep code that need no sweep: thread division (recog/utils/runtime.py), the objective check."""

import os

import pytest
from omegaconf import OmegaConf

import recog
from recog import _runtime
from recog.errors import ConfigError
from recog.tracking.sweep_job import check_objective
from recog.utils.runtime import divide_threads_among_jobs


def hydra_config(target: str, n_jobs: int):
    return OmegaConf.create({"hydra": {"launcher": {"_target_": target, "n_jobs": n_jobs}}})


@pytest.mark.parametrize(
    "n_jobs, expected", [(2, lambda cores: max(1, cores // 2)), (-1, lambda cores: 1), (64, lambda cores: 1)]
)
def test_joblib_jobs_divide_the_cores(monkeypatch, n_jobs, expected):
    monkeypatch.setattr(_runtime, "OMP_NUM_THREADS_FROM_USER", False)
    monkeypatch.setenv("OMP_NUM_THREADS", "99")
    divide_threads_among_jobs(
        hydra_config("hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", n_jobs)
    )
    assert os.environ["OMP_NUM_THREADS"] == str(expected(os.cpu_count() or 1))


def test_threads_stay_for_other_launchers_and_when_exported(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "99")
    monkeypatch.setattr(_runtime, "OMP_NUM_THREADS_FROM_USER", False)
    divide_threads_among_jobs(hydra_config("hydra._internal.core_plugins.basic_launcher.BasicLauncher", 1))
    assert os.environ["OMP_NUM_THREADS"] == "99"
    monkeypatch.setattr(_runtime, "OMP_NUM_THREADS_FROM_USER", True)
    divide_threads_among_jobs(hydra_config("hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", 2))
    assert os.environ["OMP_NUM_THREADS"] == "99"


def test_objective_must_be_an_eval_metric():
    assert check_objective(recog.compose(["sweep.objective=mAP"])) == "mAP"
    assert check_objective(recog.compose(["eval.recall_at=[1,3]", "sweep.objective=recall_at_3"])) == "recall_at_3"
    with pytest.raises(ConfigError, match="recall_at_1, recall_at_5"):
        check_objective(recog.compose(["sweep.objective=recall_at_2"]))
