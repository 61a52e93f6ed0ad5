"""A throwaway copy of the repository with a tiny configuration committed to a fresh git repository, for the
end-to-end tests that run `dvc repro` / `dvc exp run` in it (tests/stages/test_dvc_repro.py, test_dvc_exp_run.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import ROOT, TINY

BIN = Path(sys.executable).parent
DVC = str(BIN / "dvc")
GIT = ["git", "-c", "user.email=t@t.invalid", "-c", "user.name=t"]
COPIED = ("pipeline", "stages", "experiments", "dvc.yaml", "params.yaml", "pyproject.toml", ".dvc", ".gitignore")

# The shared tiny model with two decoder layers (n = 1 is the only draft depth), and small budgets everywhere
SMALL = {
    "data": {"synthetic": {"n_train": 48, "n_val": 12, "n_test": 12}},
    "model": {"tiny": {**TINY.model_dump(), "num_layers": 2}},
    "finetune": {
        "max_steps": 6,
        "batch_size": 8,
        "val_every_steps": 3,
        "val_batches": 1,
        "optimizer": {"warmup_steps": 1},
        "eval_samples": 12,
        "eval_batch_size": 12,
        "eval_max_new_tokens": 8,
    },
    "layer_choice": {"val_examples": 12, "batch_size": 12},
    "imitation": {
        "max_steps": 4,
        "batch_size": 8,
        "val_every_steps": 2,
        "val_batches": 1,
        "val_decode_prompts": 2,
        "optimizer": {"warmup_steps": 1},
        "variants": ["ce", "ce+cs+kd"],
        "parallel_heads": 2,
        "mixed": {"max_steps": 4},
    },  # the worker-process path (auto is one process on 2 cores)
    "features": {"train_examples": 24, "val_examples": 8, "batch_size": 8},
    "baselines": {
        "layerskip": {
            "max_steps": 4,
            "batch_size": 8,
            "val_every_steps": 2,
            "val_batches": 1,
            "val_decode_prompts": 2,
            "optimizer": {"warmup_steps": 1},
            "eval_samples": 12,
        },
        "draft_verify": {"prompts": 2, "thresholds": [0.5], "max_skipped": 1, "acceptance_floor": 0.0},
        "language_draft": {
            "num_layers": 1,
            "hidden_size": 32,
            "intermediate_size": 64,
            "max_steps": 4,
            "batch_size": 8,
            "val_every_steps": 2,
            "val_batches": 1,
            "optimizer": {"warmup_steps": 1},
        },
    },
    "ray": {"num_cpus": 2},
    "nas": {"num_samples": 2, "max_steps": 4, "report_every_steps": 2, "val_batches": 1, "val_decode_prompts": 1},
    "sweep": {"train_steps": 4, "captions": 2, "descriptions": 1},
    "evaluate": {
        "batch_size": 4,
        "captions": 6,
        "descriptions": 2,
        "vqa": 6,
        "speed": {"captions": 3, "descriptions": 1, "vqa": 3},
        "draft_lens": [1, 3],
        "hf_assisted": True,
    },
    # three repros here would log and register six models each: the cluster-mode test checks registration end to end
    "tracking": {"register_models": False},
}
# The 2-layer e2e model drafts only from layer 1
SWEEP_SPACE = "space:\n  draft_layers: {grid: [1]}\n  loss: {grid: [ce, ce+cs+kd]}\n  draft_len: {grid: [2]}\n"


def merge(base: dict, update: dict) -> dict:
    for key, value in update.items():
        base[key] = merge(base.get(key, {}), value) if isinstance(value, dict) else value
    return base


def run(args: list[str], cwd: Path, env: dict) -> str:
    """stdout + stderr of a command that must succeed (its output's tail in the failure otherwise)."""
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout + done.stderr


def commit_all(work: Path, env: dict, message: str) -> None:
    run([*GIT, "add", "-A"], work, env)
    run([*GIT, "commit", "-qm", message], work, env)


def make_workspace(work: Path) -> dict[str, str]:
    """The repository's code and pipeline with SMALL params in `work`, committed (DVC experiments need a commit);
    returns the environment to run dvc in (this interpreter's tools first, no tracking server)."""
    for name in COPIED:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, work / name, ignore=shutil.ignore_patterns("__pycache__", "tmp", "cache"))
        else:
            shutil.copy(source, work / name)
    params = merge(yaml.safe_load((ROOT / "params.yaml").read_text()), SMALL)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (work / "experiments/search_spaces/sweep.yaml").write_text(SWEEP_SPACE)
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PYTHONPATH": str(work), "PATH": f"{BIN}:{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    run(["git", "init", "-q"], work, env)
    commit_all(work, env, "init")
    return env
