"""The bad-images record: one line per image and process, escaped, readable back, concurrent-safe."""

import logging
import multiprocessing

from recog.data import bad_images
from recog.data.bad_images import HEADER, read_bad_images, record_bad_image, summarize


def test_record_warns_once_and_reads_back(tmp_path, caplog):
    record = str(tmp_path / "bad_images.tsv")
    with caplog.at_level(logging.WARNING, logger="recog.data.bad_images"):
        record_bad_image(record, "/data/a.png", "empty: the file has zero bytes", "left out")
        record_bad_image(record, "/data/a.png", "empty: the file has zero bytes", "left out")
        record_bad_image(record, "/data/b\tc\nd\\e.png", "cannot decode", "left out")
    lines = (tmp_path / "bad_images.tsv").read_text().split("\n")
    assert lines[0] == HEADER and len(lines) == 4 and lines[-1] == ""  # header, two images, final newline
    assert read_bad_images(record) == {
        "/data/a.png": "empty: the file has zero bytes",
        "/data/b\tc\nd\\e.png": "cannot decode",
    }
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2 and "/data/a.png" in warnings[0] and "left out" in warnings[0]
    assert summarize(record) == f"2 bad image(s) skipped, listed in {record}"


def test_no_record_file_means_no_bad_images(tmp_path):
    assert read_bad_images(tmp_path / "bad_images.tsv") == {} and summarize(tmp_path / "bad_images.tsv") is None


def test_unwritable_record_only_warns(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="recog.data.bad_images"):
        record_bad_image(str(tmp_path / "no_such_dir" / "bad_images.tsv"), "/data/x.png", "missing", "left out")
    assert any("cannot record bad image /data/x.png" in r.getMessage() for r in caplog.records)


def _write_many(record, worker):
    bad_images._recorded.clear()  # a fresh process's memory, also under fork
    logging.disable(logging.WARNING)  # 800 warnings on stderr would only be noise
    for i in range(200):
        record_bad_image(record, f"/data/{i:03d}.png", f"reason from worker {worker} " + "x" * 100, "left out")


def test_concurrent_writers_never_interleave_lines(tmp_path):
    record = str(tmp_path / "bad_images.tsv")
    processes = [multiprocessing.get_context("fork").Process(target=_write_many, args=(record, w)) for w in range(4)]
    for p in processes:
        p.start()
    for p in processes:
        p.join(60)
        assert p.exitcode == 0
    lines = [line for line in (tmp_path / "bad_images.tsv").read_text().split("\n") if line and line != HEADER]
    assert len(lines) == 4 * 200
    assert all(line.count("\t") == 1 and line.endswith("x" * 100) for line in lines)
    assert sorted(read_bad_images(record)) == [f"/data/{i:03d}.png" for i in range(200)]


def test_summary_leaves_each_image_once_in_the_record(tmp_path):
    """Two processes (e.g. loader workers) that met the same image each list it: the count said one
    image while the file had two lines. The summary at the end of a stage rewrites the file."""
    record = str(tmp_path / "bad_images.tsv")
    for _ in range(2):
        bad_images._recorded.clear()  # what another process's memory would be
        record_bad_image(record, "/data/a.png", "cannot decode", "left out")
    record_bad_image(record, "/data/b.png", "empty", "left out")
    assert (tmp_path / "bad_images.tsv").read_text().count("/data/a.png") == 2
    assert summarize(record) == f"2 bad image(s) skipped, listed in {record}"
    assert (tmp_path / "bad_images.tsv").read_text() == f"{HEADER}\n/data/a.png\tcannot decode\n/data/b.png\tempty\n"
    assert summarize(record) == f"2 bad image(s) skipped, listed in {record}"  # nothing left to rewrite
