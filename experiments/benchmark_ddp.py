"""The fine-tune stage with 1 and with 2 DDP processes (CPU, gloo) on the same configuration and global batch: loss
curves side by side, final losses and wall times; then a 2-process run killed (SIGKILL to every process) after its
step-50 checkpoint and run again, which resumes from the checkpoint.

Runs `python -m stages.prepare` once and `python -m stages.finetune` three times in a throwaway copy of the
repository (the default model or `--layers`/`--hidden`, a smaller synthetic data set, `--steps` steps of batch
`--batch`), and writes `experiments/results/ddp_finetune_cpu.json`.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments/results/ddp_finetune_cpu.json"


def params(steps: int, batch: int, devices: int, layers: int, hidden: int) -> dict[str, Any]:
    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    base["model"]["tiny"].update({"num_layers": layers, "hidden_size": hidden, "intermediate_size": hidden * 43 // 16})
    base["data"]["synthetic"].update({"n_train": 1200, "n_val": 100, "n_test": 40})
    base["finetune"].update({"max_steps": steps, "batch_size": batch, "val_every_steps": 25, "val_batches": 2})
    base["finetune"].update({"eval_samples": 40, "eval_batch_size": 40})
    base["finetune"]["vision_pretraining"] = {"max_steps": 0}  # times the fine-tune's own steps only
    strategy = "ddp" if devices > 1 else "auto"
    base["finetune"]["trainer"].update({"devices": devices, "strategy": strategy})
    return base


def workspace(folder: Path, settings: dict[str, Any], data: Path | None) -> Path:
    folder.mkdir(parents=True)
    for name in ("dvc.yaml", "pyproject.toml"):
        shutil.copy(ROOT / name, folder / name)
    (folder / "params.yaml").write_text(yaml.safe_dump(settings, sort_keys=False))
    if data is not None:
        shutil.copytree(data, folder / "data/prepared")
    return folder


def stage(name: str, folder: Path, kill_after_checkpoint: bool = False) -> tuple[int, float, str]:
    """`python -m stages.<name>` in `folder` (its own process group): exit code, wall seconds, output."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("MLFLOW_TRACKING_URI", None)
    log = folder / f"{name}.log"
    started = time.perf_counter()
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", f"stages.{name}"],
            cwd=folder,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        if kill_after_checkpoint:
            checkpoint = folder / "checkpoints/finetune/last.ckpt"
            while process.poll() is None and not (checkpoint.exists() and _stable(checkpoint)):
                time.sleep(0.2)
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    return process.returncode, time.perf_counter() - started, log.read_text()


def _stable(path: Path) -> bool:
    size = path.stat().st_size
    time.sleep(1.0)
    return size > 0 and path.stat().st_size == size


def curve(folder: Path) -> list[dict[str, float]]:
    return [
        {k: float(v) for k, v in row.items()} for row in csv.DictReader((folder / "metrics/finetune_loss.csv").open())
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--layers", type=int, default=12, help="decoder layers (default: the default model's)")
    parser.add_argument("--hidden", type=int, default=256, help="hidden size (default: the default model's)")
    args = parser.parse_args(argv)
    size = (args.layers, args.hidden)
    work = Path(tempfile.mkdtemp(prefix="fastvlm-ssd-ddp-"))
    prepared = workspace(work / "prepare", params(args.steps, args.batch, 1, *size), None)
    code, seconds, output = stage("prepare", prepared)
    assert code == 0, output[-3000:]
    data = prepared / "data/prepared"
    runs: dict[str, Any] = {}
    for name, devices in (("1 process", 1), ("2 processes", 2)):
        folder = workspace(work / f"devices{devices}", params(args.steps, args.batch, devices, *size), data)
        code, seconds, output = stage("finetune", folder)
        assert code == 0, output[-3000:]
        metrics = json.loads((folder / "metrics/finetune.json").read_text())
        runs[name] = {"wall_seconds": seconds, "metrics": metrics, "curve": curve(folder)}
        print(f"{name}: {seconds:.0f} s, final val loss {metrics['val_loss']:.4f}", flush=True)
    folder = workspace(work / "resumed", params(args.steps, args.batch, 2, *size), data)
    code, killed_seconds, output = stage("finetune", folder, kill_after_checkpoint=True)
    assert code == -signal.SIGKILL, output[-3000:]
    code, resumed_seconds, output = stage("finetune", folder)
    assert code == 0, output[-3000:]
    metrics = json.loads((folder / "metrics/finetune.json").read_text())
    runs["2 processes, killed after step 50 and resumed"] = {
        "killed_after_seconds": killed_seconds,
        "resumed_wall_seconds": resumed_seconds,
        "not_resumable_warning": "not resumable" in output,
        "metrics": metrics,
        "curve": curve(folder),
    }
    one, two = runs["1 process"]["curve"], runs["2 processes"]["curve"]
    differences = [abs(a["train_loss"] - b["train_loss"]) for a, b in zip(one, two, strict=True)]
    summary = {
        "command": f"python experiments/benchmark_ddp.py --steps {args.steps} --batch {args.batch} "
        f"--layers {args.layers} --hidden {args.hidden}",
        "setting": f"tiny-llava with {args.layers} layers, hidden {args.hidden}, global batch {args.batch}, "
        f"{args.steps} steps, fp32, {os.cpu_count()} CPU cores; 2 processes: DDP over gloo, "
        f"{args.batch // 2} examples each",
        "max_abs_train_loss_difference": max(differences),
        "final_train_loss": {k: runs[k]["curve"][-1]["train_loss"] for k in runs},
        "final_val_loss": {k: runs[k]["metrics"]["val_loss"] for k in runs},
        "runs": runs,
    }
    RESULTS.write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "runs"}, indent=1))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
