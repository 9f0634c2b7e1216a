"""Print what `make demo` produced: metrics, export parity, and where to look.

Usage: python scripts/demo_summary.py <run dir>   (the folder make demo trained into)
       python scripts/demo_summary.py --served-model <run dir>
           loads the run's MLflow Model as MLflow serves it (mlflow.pyfunc.load_model("runs:/<run id>/model"))
           and checks one prediction against the export's; exit code 1 if they differ
"""

import json
import sys
from pathlib import Path


def read(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def main(run: Path) -> None:
    best, evaluated = read(run / "metrics.json"), read(run / "eval" / "metrics.json")
    report, predicted = read(run / "export" / "export_report.json"), read(run / "predict" / "metrics.json")
    threshold = read(run / "export" / "threshold.json")
    run_id = read(run / "best_model" / "state.json").get("mlflow_run_id")
    lines = [
        "",
        "recog demo: PP-LCNet x0.5 on the embedded digits (train 0-4, retrieve the unseen 5-9)",
        f"  eval      Recall@1 {evaluated.get('recall_at_1', float('nan')):.4f}"
        f"  mAP {evaluated.get('mAP', float('nan')):.4f}"
        f"  (best epoch {best.get('epoch', '?')} of training)",
        "  export    max |dygraph - Paddle Inference| = "
        + ", ".join(f"{v:.1e} ({k})" for k, v in report.get("max_abs_diff", {}).items())
        + f"  tolerance {report.get('tolerance', '?')}",
        f"  threshold {threshold.get('score', float('nan')):.4f} at FMR {threshold.get('target_fmr', '?')} "
        f"(FNMR {threshold.get('fnmr') or float('nan'):.4f}), in the export; the eval's FNMR at FMR "
        + ", ".join(
            f"{k[len('fnmr_at_fmr_') :]}: {v:.4f}" for k, v in evaluated.items() if k.startswith("fnmr_at_fmr_")
        ),
        f"  predict   {predicted.get('num_queries', '?')} query images searched in the gallery index: "
        f"Recall@1 {predicted.get('recall_at_1', float('nan')):.4f}  mAP {predicted.get('mAP', float('nan')):.4f}",
        f"  pictures  {run / 'retrieval.png'} (eval), {run / 'predict' / 'retrieval.png'} (gallery search)",
        f"  MLflow    run {run_id} in {run.parents[1] / 'mlflow.db'}: `make ui`, then open http://127.0.0.1:5000",
        f"  files     {run}",
    ]
    print("\n".join(lines))


def served_model_check(run: Path) -> int:
    """pyfunc load of the run's MLflow Model and one prediction on a query image, against ExportedModel."""
    import os

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import mlflow
    import numpy as np

    import recog  # noqa: F401  (quiets Paddle before MLflow imports it)
    from recog.data import decode_image
    from recog.inference import ExportedModel
    from recog.tracking.mlflow_model import tracking_uri

    run_id = read(run / "best_model" / "state.json").get("mlflow_run_id")
    if not run_id:
        print(f"served model: {run} has no MLflow run (mlflow.enabled=false?)", file=sys.stderr)
        return 1
    queries = run.parents[1] / "data" / "digits" / "query_list.txt"
    first = queries.read_text().split()[0]
    image = decode_image(str(queries.parent / first))
    uri = f"runs:/{run_id}/model"
    with tracking_uri(f"sqlite:///{(run.parents[1] / 'mlflow.db').resolve()}"):
        model = mlflow.pyfunc.load_model(uri)
    served = model.predict(image[None])
    expected = ExportedModel(run / "export").predict_images([image])
    diff = float(np.abs(served - expected).max())
    ok = served.dtype == np.float32 and served.shape == expected.shape and diff < 1e-5
    print(
        f"  served    mlflow.pyfunc.load_model({uri!r}).predict(uint8 {list(image[None].shape)}) -> "
        f"{served.dtype} {list(served.shape)}, max |served - export| = {diff:.1e}: {'ok' if ok else 'MISMATCH'}\n"
        f"            serve it over HTTP: make serve MODEL={uri}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--served-model":
        sys.exit(served_model_check(Path(sys.argv[2])))
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(Path(sys.argv[1]))
