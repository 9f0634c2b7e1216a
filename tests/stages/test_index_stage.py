"""stage=index: a gallery index built from a list or a folder with an export, edited by id, re-embedded
with another export, and logged with the export as a search model that a real server answers with."""

import base64
import json
import subprocess

import cv2
import mlflow
import numpy as np
import pytest
from exports import manifest_of, read_rgb, tiny_export, write_gallery
from mlflow.tracking import MlflowClient
from mlflow_stores import new_store
from readme_blocks import read_blocks
from serving import served

import recog
from recog.errors import ConfigError, DataError
from recog.search import GalleryIndex, ModelMismatchError, model_digest
from recog.stages import index as index_stage
from recog.stages import predict
from recog.tracking.mlflow_model import SearchModel, tracking_uri
from recog.tracking.model_input import InputError

pytestmark = pytest.mark.xdist_group("test_index_stage")  # one xdist worker builds the module fixture once


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """``(root, export, gallery list)``: an export and a gallery of 12 random PNGs, 4 labels."""
    root = tmp_path_factory.mktemp("index_stage")
    new_store(root)  # a migrated MLflow store (tests/mlflow_stores.py)
    export = tiny_export(root)
    gallery = write_gallery(root / "data", count=12, classes=4)
    return root, export, gallery


@pytest.fixture(scope="module")
def built(world):
    """The summary of one stage=index run that built ``<root>/index`` and logged its search model
    (threshold 0.9999: only a gallery image itself passes, random weights or not)."""
    root, export, gallery = world
    return run(root, export, "build", f"index.gallery={gallery}", "predict.threshold=0.9999", "predict.top_k=3")


def overrides(root, export, *extra):
    return [
        "stage=index",
        f"index.model_dir={export}",
        f"index.dir={root / 'index'}",
        f"paths.output_root={root}",
        "trainer.device=cpu",
        *extra,
    ]


def run(root, export, name, *extra):
    return index_stage.run(recog.compose(overrides(root, export, *extra)), root / "runs" / name)


@pytest.mark.slow
def test_index_builds_edits_and_logs_a_search_model(world, built):
    root, export, gallery = world
    assert built["size"] == 12 and built["ids"] == "0..11" and built["threshold"]["source"] == "predict.threshold"
    assert manifest_of(root / "index")["model"] == model_digest(export)
    run_id = built["mlflow_model"].split("/")[1]
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    run_info = client.get_run(run_id)
    assert run_info.data.tags["recog.stage"] == "index" and run_info.data.metrics["gallery_size"] == 12
    with tracking_uri(f"sqlite:///{root / 'mlflow.db'}"):
        model = mlflow.pyfunc.load_model(built["mlflow_model"])
    assert model.metadata.metadata["recog_format"] == "recog-search"
    image = read_rgb(root / "data" / "img" / "gallery_6.png")
    (answer,) = model.predict([cv2.imencode(".png", image[:, :, ::-1])[1].tobytes()])
    assert answer["decision"] == 2 and answer["matches"][0]["id"] == 6 and answer["threshold"] == 0.9999

    edit = "index.log_model=false"  # each edit could log a search model too: the first did
    again = run(root, export, "again", f"index.gallery={gallery}", edit)  # the same gallery: nothing new
    assert again["added_from_gallery"] == 0 and again["size"] == 12
    removed = run(root, export, "remove", "index.remove=[0,5]", edit)
    assert removed["removed"] == 2 and removed["size"] == 10
    more = write_gallery(root / "data", count=2, classes=4, seed=3, name="more")
    added = run(root, export, "add", f"index.add={more}", edit)
    assert added["added"] == 2 and added["ids"] == "1..13"
    saved = GalleryIndex.load(root / "index")
    assert 0 not in saved.ids and 5 not in saved.ids and saved.paths[-1].endswith("more_1.png")
    assert [e["op"] for e in saved.edits] == ["build", "remove", "add"]
    assert saved.edits[-1]["source"] == str(more) and saved.edits[1]["ids"] == [0, 5]
    with pytest.raises(DataError, match=r"2 image\(s\) are indexed already, e.g. .*more_0.png \(id 12\)"):
        run(root, export, "add_again", f"index.add={more}", edit)
    with pytest.raises(DataError, match=r"index.remove=\[5\]: no gallery entry has id 5"):
        run(root, export, "remove_again", "index.remove=[5]", edit)
    assert GalleryIndex.load(root / "index").ntotal == 12  # refused edits changed nothing
    with index_stage.editing(root / "index"), pytest.raises(ConfigError, match="another stage=index is editing"):
        run(root, export, "concurrent", "index.remove=[1]", edit)
    search = SearchModel(root / "runs" / "build" / "search_model")
    with pytest.raises(InputError, match="params: top_k must be an integer from 1 to 1000, got 0"):
        search.predict([image], params={"top_k": 0})


@pytest.mark.slow
def test_another_export_re_embeds_the_stored_images_and_predict_refuses_a_mismatch(world, tmp_path):
    root, export, gallery = world
    own = tmp_path / "own"
    new_store(own)
    run(own, export, "build", f"index.gallery={gallery}", "index.log_model=false")
    other = tiny_export(tmp_path / "other", seed=1)
    before = GalleryIndex.load(own / "index")
    queries = str(root / "data" / "gallery.txt")
    cfg = recog.compose(
        [
            "stage=predict",
            f"predict.model_dir={other}",
            f"predict.input={queries}",
            f"predict.gallery={gallery}",
            f"predict.index_dir={own / 'index'}",
            f"paths.output_root={tmp_path}",
            "mlflow.enabled=false",
        ]
    )
    with pytest.raises(ModelMismatchError, match=f"stage=index index.dir={own / 'index'} index.model_dir={other}"):
        predict.run(cfg, tmp_path / "predict")
    summary = run(own, other, "reembed", "index.log_model=false")
    assert summary["reembedded"] == 12
    after = GalleryIndex.load(own / "index")
    assert after.model == model_digest(other) and after.edits[-1]["op"] == "reembed"
    np.testing.assert_array_equal(after.ids, before.ids)
    assert after.paths == before.paths and not np.allclose(after.gallery_vectors(), before.gallery_vectors())
    predict.run(cfg, tmp_path / "predict")  # now the same model: searched
    results = json.loads((tmp_path / "predict" / "results.json").read_text())
    assert results[0]["results"][0]["path"] == results[0]["query"]


def test_a_folder_of_label_subfolders_is_a_gallery_with_those_labels(tmp_path):
    for label in ("cat", "dog"):
        (tmp_path / "g" / label).mkdir(parents=True)
        cv2.imwrite(str(tmp_path / "g" / label / "a.png"), np.zeros((8, 8, 3), np.uint8))
    items = index_stage.labelled_items(str(tmp_path / "g"), "index.gallery")
    assert [(item.label, item.path) for item in items] == [
        ("cat", str(tmp_path / "g" / "cat" / "a.png")),
        ("dog", str(tmp_path / "g" / "dog" / "a.png")),
    ]
    cv2.imwrite(str(tmp_path / "g" / "loose.png"), np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(DataError, match=r"1 image\(s\) directly in the folder, e.g. loose.png"):
        index_stage.labelled_items(str(tmp_path / "g"), "index.gallery")
    (tmp_path / "list.txt").write_text("g/cat/a.png 1\ng/dog/a.png\n")
    with pytest.raises(DataError, match="1 of 2 images have no label"):
        index_stage.labelled_items(str(tmp_path / "list.txt"), "index.add")


@pytest.mark.parametrize(
    "extra, message",
    [
        (["index.model_dir=null"], "stage=index needs an export"),
        (["index.model_dir=/nowhere"], "index.model_dir=/nowhere is not a folder"),
        ([], "no gallery index in .*: build one with index.gallery="),
        (["index.gallery=/nowhere.txt"], "index.gallery=/nowhere.txt is neither a folder nor a list file"),
        (["index.gallery=.", "index.rebuild_fraction=0"], "index.rebuild_fraction must be in"),
    ],
)
def test_what_stage_index_needs_is_checked_before_any_work(tmp_path, extra, message):
    (tmp_path / "export").mkdir()
    cfg = recog.compose(overrides(tmp_path, tmp_path / "export", *extra))
    with pytest.raises(ConfigError, match=message):
        index_stage.check_ready(cfg)


def readme_request(port: int, image) -> str:
    """The README's request (Models: write request.json with a base64 PNG, curl it) against ``port``."""
    (block,) = [b for b in read_blocks() if "curl -s http://127.0.0.1:5001/invocations" in b.text]
    lines = [line for line in block.text.splitlines() if line.startswith(("printf ", "curl "))]
    assert len(lines) == 2, lines
    readme_image = "outputs/data/digits/images/7/0007.png"
    assert readme_image in lines[0]
    return "\n".join(lines).replace("5001", str(port)).replace(readme_image, str(image))


def _png_b64(image) -> str:
    return base64.b64encode(cv2.imencode(".png", image[:, :, ::-1])[1].tobytes()).decode()


@pytest.mark.slow
def test_the_served_search_model_answers_a_gallery_object_with_its_label_and_an_unseen_one_unknown(
    world, built, tmp_path
):
    root, export, gallery = world
    assert built["threshold"]["score"] == 0.9999
    known = read_rgb(root / "data" / "img" / "gallery_7.png")
    unseen = np.random.default_rng(42).integers(0, 256, (20, 20, 3), dtype=np.uint8)
    # `make serve MODEL=...` as a user runs it: the model checked, then served from the checked copy
    with served(built["mlflow_model"], f"sqlite:///{root / 'mlflow.db'}", tmp_path, make_outputs=root) as post:
        status, reply = post({"inputs": {"image": [_png_b64(known), _png_b64(unseen)]}})
        assert status == 200, reply
        first, second = reply["predictions"]
        assert first["decision"] == 3 and first["matches"][0]["id"] == 7 and first["score"] >= 0.9999
        assert first["matches"][0]["path"].endswith("gallery_7.png") and len(first["matches"]) == 3
        assert second["decision"] == "unknown" and second["score"] < 0.9999 and second["threshold"] == 0.9999
        status, reply = post({"inputs": [known.tolist()], "params": {"top_k": 5}})
        assert status == 200 and len(reply["predictions"][0]["matches"]) == 5
        status, reply = post({"inputs": [(known / 255).tolist()]})
        assert status == 400 and "got float64 values" in reply["message"]
        command = readme_request(post.port, root / "data" / "img" / "gallery_7.png")
        result = subprocess.run(["bash", "-c", command], cwd=tmp_path, capture_output=True, text=True, timeout=120)
        (answer,) = json.loads(result.stdout)["predictions"]  # the README's curl, as written
        assert answer["decision"] == 3 and answer["matches"][0]["id"] == 7
