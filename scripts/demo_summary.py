"""Print what `make demo` produced: metrics, export parity, and where to look.

Usage: python scripts/demo_summary.py <run dir>   (the folder make demo trained into)
"""

import json
import sys
from pathlib import Path


def read(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def main(run: Path) -> None:
    best, evaluated = read(run / "metrics.json"), read(run / "eval" / "metrics.json")
    report, predicted = read(run / "export" / "export_report.json"), read(run / "predict" / "metrics.json")
    run_id = read(run / "best_model" / "state.json").get("mlflow_run_id")
    lines = [
        "",
        "recog demo: PP-LCNet x0.5 on the embedded digits (train 0-4, retrieve the unseen 5-9)",
        f"  eval      Recall@1 {evaluated.get('recall_at_1', float('nan')):.4f}  mAP {evaluated.get('mAP', float('nan')):.4f}"
        f"  (best epoch {best.get('epoch', '?')} of training)",
        "  export    max |dygraph - Paddle Inference| = "
        + ", ".join(f"{v:.1e} ({k})" for k, v in report.get("max_abs_diff", {}).items())
        + f"  tolerance {report.get('tolerance', '?')}",
        f"  predict   {predicted.get('num_queries', '?')} query images searched in the gallery index: "
        f"Recall@1 {predicted.get('recall_at_1', float('nan')):.4f}  mAP {predicted.get('mAP', float('nan')):.4f}",
        f"  pictures  {run / 'retrieval.png'} (eval), {run / 'predict' / 'retrieval.png'} (gallery search)",
        f"  MLflow    run {run_id} in {run.parents[1] / 'mlflow.db'}: `make ui`, then open http://127.0.0.1:5000",
        f"  files     {run}",
    ]
    print("\n".join(lines))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(Path(sys.argv[1]))
