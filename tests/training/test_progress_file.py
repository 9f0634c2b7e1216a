"""``trainer.progress_file``: where the run is, rewritten whole at each point of the loop (``ProgressFile``)."""

import json

import pytest
from image_lists import write_image_lists

import recog
from recog.stages import train
from recog.training.callbacks import Callback


@pytest.fixture(scope="module")
def lists(tmp_path_factory):
    return write_image_lists(tmp_path_factory.mktemp("progress_lists"), (("train", 24), ("query", 10)))


class _ReadsTheFile(Callback):
    """Added after the built-in callbacks: reads the progress file at each hook, as another program would."""

    def __init__(self, path):
        self.path, self.seen = path, []

    def _read(self, hook, state):
        self.seen.append((hook, dict(state), json.loads(self.path.read_text())))

    def on_train_step_end(self, trainer, state, logged):
        self._read("on_train_step_end", state)

    def on_epoch_end(self, trainer, state):
        self._read("on_epoch_end", state)

    def on_fit_end(self, trainer, state):
        self._read("on_fit_end", state)


def test_the_progress_file_follows_every_step_eval_and_epoch(lists, tmp_path):
    assert recog.compose([]).trainer.progress_file is None  # off by default
    path = tmp_path / "watch" / "progress.json"
    cfg = recog.compose(
        [
            "backbone.scale=0.25",
            "data.image_size=16",
            "data.num_workers=0",
            "neck.embedding_size=16",
            "data.batch_size=8",
            "data.samples_per_class=4",
            "trainer.epochs=2",
            "trainer.steps_per_epoch=3",
            "mlflow.enabled=false",
            "export.after_train=false",
            *lists,
            f"paths.output_root={tmp_path}",
            f"trainer.progress_file={path}",
        ]
    )
    reader = _ReadsTheFile(path)
    train.run(cfg, tmp_path / "run", callbacks=[reader])
    steps = [
        (p["event"], p["epoch"], p["step_in_epoch"], p["step"]) for h, _, p in reader.seen if h == "on_train_step_end"
    ]
    assert steps == [
        ("step", 1, 1, 1),
        ("step", 1, 2, 2),
        ("step", 1, 3, 3),
        ("step", 2, 1, 4),
        ("step", 2, 2, 5),
        ("step", 2, 3, 6),
    ]
    ends = [(p["event"], p["epoch"], p["step_in_epoch"]) for h, _, p in reader.seen if h == "on_epoch_end"]
    assert ends == [("epoch_end", 1, 0), ("epoch_end", 2, 0)]  # after the epoch's eval
    (_, _, last) = reader.seen[-1]
    assert last["event"] == "end" and last["step"] == 6  # the run's final steps are done
    assert last["epochs"] == 2 and last["steps"] == 3 and isinstance(last["pid"], int)
    assert json.loads(path.read_text()) == last
    assert [p.name for p in path.parent.iterdir()] == ["progress.json"]  # no temp file left
