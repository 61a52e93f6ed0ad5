"""DVC stage `train_imitation`: one imitation network per loss variant on the frozen backbone, one ce+cs+kd
network per other fusion of the cosine target (`imitation.fusion_comparison`, the fusion table), plus the
mixed schedule (backbone and draft trained jointly, then the backbone frozen).

The heads are independent, so `imitation.parallel_heads` worker processes can train them at once, each with
its own backbone copy (a frozen-schedule worker checks its copy is bit-identical afterwards). On CPU a head
trains 1.7× faster on two threads than on one, so `auto` gives each process two cores: one process on a
2-core machine (two single-threaded ones measured 560 s vs 586 s for the six default heads: no gain), several
on a many-core one.

Outputs: `models/imitation/<variant>/` and `models/imitation/fusion-<fusion>/` (config + weights, loadable
without training code), `models/mixed_backbone/` (the mixed schedule's backbone), `metrics/imitation.json`
(validation agreement with the full model's greedy tokens and end-to-end acceptance per head, the early-exit
draft without imitation as the reference, and the full-model CIDEr the mixed schedule costs).
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from pipeline import tracking
from pipeline.config import Params
from pipeline.data.examples import load_prepared
from pipeline.data.prompts import PromptBuilder
from pipeline.evaluation.captioning import caption_cider
from pipeline.evaluation.flops import per_token_flops
from pipeline.evaluation.layer_choice import resolve_draft_layers
from pipeline.io import atomic_write_json
from pipeline.models.fusion import build_fusion, fused_layer_count
from pipeline.models.imitation import ImitationNetwork, ImitationNetworkConfig, architecture_spec, save_imitation
from pipeline.models.loading import load_backbone, save_backbone
from pipeline.training.imitation import decode_acceptance, fit_imitation, validation_prompts
from pipeline.training.imitation_losses import variant_weights
from stages._common import run_stage

FINETUNED = Path("models/finetuned")
OUT = Path("models/imitation")
MIXED_BACKBONE = Path("models/mixed_backbone")
LAYER_CHOICE = Path("metrics/layer_choice.json")
BEST_ARCHITECTURE = Path("models/nas/best_architecture.json")  # written by the nas stage when it exists
METRICS = Path("metrics/imitation.json")


def architecture(params: Params, hidden_size: int) -> ImitationNetworkConfig:
    return ImitationNetworkConfig(hidden_size=hidden_size, **architecture_spec(params.imitation.architecture.model_dump(), BEST_ARCHITECTURE))


def weights_fingerprint(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def training_plan(cfg) -> list[tuple[str, str, str, bool]]:
    """(name, loss variant, fusion, mixed) of every head: the loss variants, a ce+cs+kd head per extra fusion
    of the fusion table (the main fusion's is the ce+cs+kd variant, unless that variant is not trained), the mixed schedule."""
    plan = [(variant, variant, cfg.fusion, False) for variant in cfg.variants]
    plan += [(head, "ce+cs+kd", kind, False) for kind, head in cfg.fusion_table_heads().items() if head not in cfg.variants]
    return plan + [("mixed", "ce+cs+kd", cfg.fusion, True)]


def available_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def worker_layout(setting: int | str, heads: int, accelerator: str) -> tuple[int, int]:
    """(processes, torch threads each): `auto` is a process per two cores on CPU (a second thread still speeds a
    head up 1.7×), one process on an accelerator (one model copy per device)."""
    cpus = available_cpus()
    if setting == "auto":
        workers = min(heads, cpus // 2) if accelerator == "cpu" else 1
    else:
        workers = min(int(setting), heads)
    return max(1, workers), max(1, cpus // max(1, workers))


@dataclass(frozen=True)
class HeadJob:
    name: str
    variant: str
    loss_weights: dict[str, float]
    fusion: str
    mixed: bool
    params: dict[str, Any]  # Params.model_dump(): plain data, so the job pickles into a worker
    draft_layers: int
    architecture: dict[str, Any]
    threads: int
    mlflow_uri: str | None
    mlflow_run_id: str | None
    progress_bar: bool


def train_head(job: HeadJob) -> dict[str, Any]:
    """Train and save one head from a fresh copy of the fine-tuned backbone; its metrics (in a worker process or not)."""
    torch.set_num_threads(job.threads)
    params = Params.model_validate(job.params)
    cfg = params.imitation
    splits = load_prepared(params.data.out_dir)
    backbone = load_backbone(FINETUNED)
    adapter, n = backbone.adapter, job.draft_layers
    builder = PromptBuilder(backbone.tokenizer, params.data.prompts, adapter.image_token_id, adapter.num_image_tokens)
    before = None if job.mixed else weights_fingerprint(backbone.model)
    weights = job.loss_weights
    torch.manual_seed(params.seed)
    head = ImitationNetwork(ImitationNetworkConfig(**job.architecture))
    fusion = build_fusion(job.fusion, adapter.hidden_size, fused_layer_count(cfg.fusion_layers, adapter.num_layers, n))
    print(f"train_imitation: {job.name} (n = {n}, weights {weights}, {job.fusion} fusion{', mixed schedule' if job.mixed else ''}, "
          f"{job.threads} thread(s))", flush=True)
    result = fit_imitation(backbone.model, head, fusion, builder, backbone.image_processor, splits, cfg,
                           draft_layers=n, loss_weights=weights, mixed=job.mixed, seed=params.seed,
                           mlflow_uri=job.mlflow_uri, mlflow_run_id=job.mlflow_run_id, progress_bar=job.progress_bar)
    metrics: dict[str, Any] = dict(result.metrics)
    metrics["parameters"] = float(sum(p.numel() for p in head.parameters()))
    metrics.update({f"flops_{k}": v for k, v in per_token_flops(adapter, n, head).items()})
    if job.mixed:
        metrics["full_model_test_cider"] = caption_cider(backbone, builder, splits["test"], 200)
        metrics["finetuned_test_cider"] = caption_cider(load_backbone(FINETUNED), builder, splits["test"], 200)
        save_backbone(backbone, MIXED_BACKBONE)
    else:
        metrics["backbone_unchanged"] = weights_fingerprint(backbone.model) == before
    save_imitation(head, OUT / job.name, {"draft_layers": n, "variant": job.variant, "fusion": job.fusion, "mixed": job.mixed})
    print(f"train_imitation: {job.name} done in {metrics['train_seconds']:.0f} s, agreement {metrics.get('val_agreement', float('nan')):.3f}", flush=True)
    return {**metrics, "variant": job.variant, "fusion": job.fusion}


def train_heads(jobs: list[HeadJob], workers: int) -> dict[str, dict[str, Any]]:
    """Every job's metrics by name; in `workers` spawned processes, longest jobs first, when workers > 1."""
    if workers == 1:
        return {job.name: train_head(job) for job in jobs}
    # the mixed schedule (it trains the backbone) and trainable fusions take longest: start them first
    order = sorted(jobs, key=lambda j: (not j.mixed, j.fusion == "average"))
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {job.name: pool.submit(train_head, job) for job in order}
        try:
            return {job.name: futures[job.name].result() for job in jobs}
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise


def main(params: Params) -> None:
    cfg = params.imitation
    splits = load_prepared(params.data.out_dir)
    backbone = load_backbone(FINETUNED)
    adapter = backbone.adapter
    n = resolve_draft_layers(cfg.draft_layers, adapter.num_layers, LAYER_CHOICE, "imitation.draft_layers")
    arch = architecture(params, adapter.hidden_size)
    builder = PromptBuilder(backbone.tokenizer, params.data.prompts, adapter.image_token_id, adapter.num_image_tokens)
    prompts = validation_prompts(splits["val"], builder, backbone.image_processor, cfg.val_decode_prompts)
    plan = training_plan(cfg)
    workers, threads = worker_layout(cfg.parallel_heads, len(plan), cfg.accelerator)
    if workers == 1:
        threads = torch.get_num_threads()
    results: dict[str, Any] = {"draft_layers": n, "num_layers": adapter.num_layers}
    section = params.model_dump(include={"imitation"})
    with tracking.stage_run("train_imitation", params.tracking.experiment, section):
        early = decode_acceptance(backbone.model, None, n, prompts)
        results["no_imitation"] = {"val_acceptance_rate": early.acceptance_rate, "val_mean_accepted_length": early.mean_accepted_length}
        jobs = []
        for name, variant, fusion_kind, mixed in plan:
            weights = variant_weights(variant, cfg.weights)
            run_id = tracking.open_child_run(name, {"loss_weights": weights, "fusion": fusion_kind, "mixed": mixed, "draft_layers": n})
            jobs.append(HeadJob(name, variant, weights, fusion_kind, mixed, params.model_dump(), n, asdict(arch), threads,
                                tracking.tracking_uri(), run_id, progress_bar=workers == 1))
        print(f"train_imitation: {len(jobs)} heads in {workers} process(es) × {threads} thread(s)")
        try:
            trained = train_heads(jobs, workers)
        except BaseException:
            for job in jobs:
                tracking.close_child_run(job.mlflow_run_id, failed=True)
            raise
        for job in jobs:
            tracking.close_child_run(job.mlflow_run_id, {k: v for k, v in trained[job.name].items() if isinstance(v, float)})
        results.update(trained)
        changed = [name for name, row in trained.items() if row.get("backbone_unchanged") is False]
        results["frozen_backbone_unchanged"] = not changed
        if changed:
            raise RuntimeError(f"the frozen backbone changed while training {changed}: a bug, results discarded")
        results["workers"] = {"processes": workers, "threads": threads}
        atomic_write_json(METRICS, results)
    summary = {k: (round(v.get("val_agreement", float("nan")), 3), round(v.get("val_acceptance_rate", float("nan")), 3))
               for k, v in results.items() if isinstance(v, dict) and "val_acceptance_rate" in v}
    print(f"n = {n}; (agreement, acceptance) per head: {summary}")


if __name__ == "__main__":
    run_stage(main)
