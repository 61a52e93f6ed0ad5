"""Two processes (DDP over gloo on CPU, Lightning re-running `tests.training.ddp_script` per rank) against one:

- fine-tuning trains on the same examples step for step with the same global-batch loss, and a run killed after its
  step-50 checkpoint resumes under DDP where it stopped, continuing the data order (no "not resumable" warning);
- the frozen imitation schedule leaves the backbone bit-identical, the mixed schedule (its backbone frozen part-way)
  and LayerSkip's layer dropout (parameters without gradient in a step) train;
- select_layer's confidences and evaluate's outputs, counts and quality metrics shared out over two processes are
  the same numbers as in one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.config import FinetuneConfig, LayerChoiceConfig, PromptConfig, TrainerConfig
from tests.conftest import ROOT, tiny_backbone, write_tiny_dataset
from tests.training.ddp_script import StepRecorder
from tests.training.sharded_evaluation import layer_choice, method_rows

# each test starts 2 interpreters (Lightning's launcher) besides pytest's: ~30 s apiece on 2 cores, so `make test-scale`
pytestmark = [pytest.mark.slow, pytest.mark.scale, pytest.mark.usefixtures("one_thread")]
# float32 on both sides of every comparison: bf16 autocast (the fine-tune's `auto` on a bf16 CPU) rounds each process's
# half-batch differently from the whole batch, far beyond LOSS_TOLERANCE
DDP = {"accelerator": "cpu", "devices": 2, "strategy": "ddp", "num_threads": 1, "precision": "32-true"}
# 56 steps: a checkpoint at 50 (every 50 steps), mid-epoch (24 images / batch 8: 3 batches an epoch)
FINETUNE = {
    "max_steps": 56,
    "batch_size": 8,
    "val_every_steps": 28,
    "val_batches": 1,
    "optimizer": {"warmup_steps": 1, "lr": 3e-3},
    "trainer": {"precision": "32-true"},  # the one-process reference; the DDP runs replace it with DDP
}
LOSS_TOLERANCE = 1e-4  # per step, 1 vs 2 processes: float32 sums in another order, never another batch


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ddp-data")
    write_tiny_dataset(root)
    return root


def run_script(spec: dict, folder: Path, timeout: float = 300) -> tuple[int, str, float]:
    """`python -m tests.training.ddp_script` in its own process group (a kill takes every rank); exit code, output,
    seconds."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "spec.json"
    path.write_text(json.dumps({**spec, "out": str(folder)}))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "default"}
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "tests.training.ddp_script", str(path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        start_new_session=True,
    )
    return done.returncode, done.stdout + done.stderr, time.perf_counter() - started


def steps(folder: Path) -> dict[int, dict]:
    """Per step: the union of every rank's examples and rank zero's (synced) loss; the last record of a step wins
    (a resumed run re-records nothing it did not redo)."""
    found: dict[int, dict] = {}
    for path in sorted(folder.glob("steps-rank*.jsonl")):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            entry = found.setdefault(row["step"], {"examples": set(), "ranks": set()})
            entry["examples"] |= set(row["examples"])
            entry["ranks"].add(row["rank"])
            if row["rank"] == 0:
                entry["loss"] = row["loss"]
    return found


def test_two_processes_train_like_one_and_resume_where_they_stopped(data, tmp_path):
    from pipeline.data.prepared import load_prepared
    from pipeline.data.tokenizer import load_word_tokenizer
    from pipeline.training.finetune import fit_finetune

    # one process, in pytest: the reference
    reference = tmp_path / "one"
    reference.mkdir()
    splits, tokenizer = load_prepared(data), load_word_tokenizer(data / "tok")
    backbone = tiny_backbone(tokenizer, num_layers=2)
    started = time.perf_counter()
    one = fit_finetune(
        backbone.model,
        backbone.prompt_builder(PromptConfig()),
        backbone.image_processor,
        splits,
        FinetuneConfig.model_validate(FINETUNE),
        seed=0,
        checkpoint_dir=reference / "ckpt",
        fingerprint="ddp-test",
        callbacks=[StepRecorder(reference)],
    )
    one_seconds = time.perf_counter() - started
    expected = steps(reference)
    assert sorted(expected) == list(range(1, 57)) and one.metrics["processes"] == 1

    # two processes, killed (the whole process group, as a preempted job) after step 53: checkpoint at 50
    spec = {"scenario": "finetune", "data": str(data), "config": {**FINETUNE, "trainer": DDP}}
    killed = tmp_path / "two"
    code, output, killed_seconds = run_script({**spec, "kill_at": 53}, killed)
    assert code == -9 and not (killed / "result.json").exists(), output[-3000:]
    first = steps(killed)
    assert sorted(first) == list(range(1, 54)) and all(first[s]["ranks"] == {0, 1} for s in first)
    assert (killed / "ckpt/last.ckpt").exists()
    for step in range(1, 54):  # the same examples each step, split over the two processes
        assert first[step]["examples"] == expected[step]["examples"], step
        assert first[step]["loss"] == pytest.approx(expected[step]["loss"], abs=LOSS_TOLERANCE), step

    # the same command again: resumes from step 50 and continues the data order
    for path in killed.glob("steps-rank*.jsonl"):
        path.rename(path.with_suffix(".killed"))
    code, output, resumed_seconds = run_script(spec, killed)
    assert code == 0, output[-3000:]
    assert "not resumable" not in output
    result = json.loads((killed / "result.json").read_text())
    assert result["world_size"] == 2 and result["metrics"]["processes"] == 2 and result["metrics"]["resumed"] == 1
    second = steps(killed)
    assert sorted(second) == list(range(51, 57))
    for step in range(51, 57):
        assert second[step]["examples"] == expected[step]["examples"], step
        assert second[step]["loss"] == pytest.approx(expected[step]["loss"], abs=LOSS_TOLERANCE), step
    assert result["metrics"]["val_loss"] == pytest.approx(one.metrics["val_loss"], abs=LOSS_TOLERANCE)
    print(
        f"\n1 process: {one_seconds:.1f} s, final loss {expected[56]['loss']:.5f}; 2 processes: killed at 53 after "
        f"{killed_seconds:.1f} s, resumed 51-56 in {resumed_seconds:.1f} s, final loss {second[56]['loss']:.5f}"
    )


def test_imitation_schedules_and_layerskip_train_under_ddp(data, tmp_path):
    spec = {
        "scenario": "heads",
        "data": str(data),
        "trainer": DDP,
        "imitation": {
            "max_steps": 6,
            "batch_size": 8,
            "val_every_steps": 3,
            "val_batches": 1,
            "val_decode_prompts": 1,
            "optimizer": {"warmup_steps": 1},
            "mixed": {"joint_epochs": 1.0},
        },
        "layerskip": {
            "max_steps": 4,
            "batch_size": 8,
            "val_every_steps": 4,
            "val_batches": 1,
            "val_decode_prompts": 1,
            "optimizer": {"warmup_steps": 1, "lr": 1e-2},
            "p_max": 0.9,  # drops layers in most steps: parameters without a gradient
        },
    }
    code, output, _ = run_script(spec, tmp_path)
    assert code == 0, output[-3000:]
    found = json.loads((tmp_path / "result.json").read_text())
    frozen, mixed, layerskip = found["frozen"], found["mixed"], found["layerskip"]
    assert found["world_size"] == 2
    assert frozen["backbone_unchanged"] is True and frozen["metrics"]["processes"] == 2
    assert frozen["metrics"]["steps"] == 6 and "val_acceptance_rate" in frozen["metrics"]
    assert mixed["backbone_unchanged"] is False and mixed["metrics"]["joint_steps"] == 3
    # the mixed backbone trains in the joint steps, then stays frozen: DDP leaves the gradients of parameters no
    # process used unset, so AdamW does not move them
    after = mixed["backbone_after_step"]
    assert len(set(after[:3])) == 3 and set(after[2:]) == {after[2]}
    assert frozen["head"] != mixed["head"]
    assert layerskip["backbone_changed"] is True and layerskip["metrics"]["steps"] == 4
    assert layerskip["metrics"]["layers_dropped"] > 0


def test_select_layer_and_evaluate_shared_out_give_the_numbers_of_one_process(data, tmp_path):
    from pipeline.data.prepared import load_prepared
    from pipeline.data.tokenizer import load_word_tokenizer

    splits, tokenizer = load_prepared(data), load_word_tokenizer(data / "tok")
    one = TrainerConfig()
    expected_choice = layer_choice(splits, tokenizer, LayerChoiceConfig(val_examples=12, batch_size=4, trainer=one))
    expected_rows = method_rows(splits, tokenizer, one)
    code, output, _ = run_script({"scenario": "shards", "data": str(data), "trainer": DDP}, tmp_path)
    assert code == 0, output[-3000:]
    found = json.loads((tmp_path / "result.json").read_text())
    assert found["world_size"] == 2
    assert found["layer_choice"] == expected_choice  # bit for bit: the batches' sums added in the same order
    assert found["methods"] == json.loads(json.dumps(expected_rows))
    # the check has teeth: the methods decode different tokens and verification accepts some drafts
    rows = found["methods"]
    assert len({row["identical_share"] for row in rows.values()}) > 1
    assert any(0 < row.get("acceptance_rate", 0) < 1 for row in rows.values())
