"""A throwaway copy of the repository with a tiny configuration committed to a fresh git repository, for the
end-to-end tests that run `dvc repro` / `dvc exp run` in it (tests/stages/test_dvc_repro.py, test_dvc_exp_run.py).
The copying and the environment are the cluster demo's (`experiments/cluster_demo.py`, also used by
tests/stages/test_cluster_mode.py)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import yaml

from tests.conftest import ROOT, TINY

BIN = Path(sys.executable).parent
DVC = str(BIN / "dvc")


def _load_cluster_demo() -> ModuleType:
    # experiments/ is scripts, not a package
    spec = importlib.util.spec_from_file_location("cluster_demo", ROOT / "experiments/cluster_demo.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["cluster_demo"] = module
    spec.loader.exec_module(module)
    return module


cluster_demo = _load_cluster_demo()

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
        "vision_pretraining": {"max_steps": 4, "batch_size": 8, "val_batches": 1},
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
        "speed": {"captions": 3, "descriptions": 1, "vqa": 3, "repeats": 1},  # the tests check losslessness, not speed
        "draft_lens": [1, 3],
        "hf_assisted": True,
    },
    # three repros here would log and register six models each: the cluster-mode test checks registration end to end
    "tracking": {"register_models": False},
}
# The 2-layer e2e model drafts only from layer 1
SWEEP_SPACE = "space:\n  draft_layers: {grid: [1]}\n  loss: {grid: [ce, ce+cs+kd]}\n  draft_len: {grid: [2]}\n"


def run(args: list[str], cwd: Path, env: dict) -> str:
    """stdout + stderr of a command that must succeed (its output's tail in the failure otherwise)."""
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout + done.stderr


def make_workspace(work: Path) -> dict[str, str]:
    """The repository's code and pipeline with SMALL params in `work`, committed (DVC experiments need a commit);
    returns the environment to run dvc in (this interpreter's tools first, no tracking server or Ray cluster)."""
    params = cluster_demo.merge(yaml.safe_load((ROOT / "params.yaml").read_text()), SMALL)
    cluster_demo.copy_repository(work, params, sweep_space=SWEEP_SPACE)
    return cluster_demo.base_env(work)
