"""`make mlflow-ui`: the MLflow UI on the pipeline's store, opened on the experiment's runs.

MLflow 3.17's UI chooses between its GenAI layout (a traces overview) and its model-training layout (runs) from the
address's `workflowType` parameter, else from the browser's last choice (GenAI at first), so a plain address lands on
"No data available". This prints the address of the experiment's run list in the model-training layout (the
experiment is also tagged as a model-training experiment), then runs `mlflow ui` on the local store. With
`MLFLOW_TRACKING_URI` naming a server it only prints that server's address.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    os.chdir(ROOT)
    from pipeline import tracking

    experiment = yaml.safe_load((ROOT / "params.yaml").read_text())["tracking"]["experiment"]
    uri = tracking.tracking_uri()
    if uri.startswith(("http://", "https://")):
        tracking.check_reachable(uri)
        print(tracking.runs_page(uri, tracking.experiment_id(experiment)))
        return 0
    page = tracking.runs_page(f"http://{args.host}:{args.port}", tracking.experiment_id(experiment))
    print(f"MLflow UI, the experiment's runs: {page}", flush=True)
    mlflow = str(Path(sys.executable).parent / "mlflow")
    os.execv(mlflow, [mlflow, "ui", "--backend-store-uri", uri, "--host", args.host, "--port", str(args.port)])


if __name__ == "__main__":
    sys.exit(main())
