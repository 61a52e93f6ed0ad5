"""The `train_imitation` stage's work: one imitation network per loss variant on the frozen backbone, one ce+cs+kd
network per other fusion of the cosine target (`imitation.fusion_comparison`, the fusion table), plus the mixed
schedule (backbone and draft trained jointly, then the backbone frozen).

The heads are independent, so `imitation.parallel_heads` worker processes can train them at once, each with its
own backbone copy (a frozen-schedule worker checks its copy is bit-identical afterwards). A head that runs the
backbone trains 1.7x faster on two threads than on one (two single-threaded workers measured 560 s vs 586 s for the
six heads: no gain), so without the feature cache `auto` gives each process two cores; a head reading the cache
gains only 1.25-1.4x from a second thread, so with it `auto` runs a process per core (`worker_layout`).

Under DDP (`imitation.trainer.devices` × `num_nodes` > 1) the heads train one after another, each over every
process (the processes run this code in lockstep); rank zero alone saves them, logs them as MLflow models and
returns the stage's metrics.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch

from pipeline import tracking
from pipeline.config import ImitationArchitecture, ImitationConfig, Params, TrainerConfig
from pipeline.data.prepared import load_prepared
from pipeline.distributed import is_rank_zero
from pipeline.evaluation.flops import per_token_flops
from pipeline.evaluation.greedy_captions import caption_cider
from pipeline.evaluation.layer_choice import resolve_draft_layers
from pipeline.evaluation.prompts import validation_prompts
from pipeline.models.deep_layer_fusion import build_fusion, fused_layer_count
from pipeline.models.imitation import (
    CONFIG_FILE,
    ImitationNetwork,
    load_imitation,
    save_imitation,
    searched_architecture,
)
from pipeline.models.loading import load_backbone, save_backbone
from pipeline.training.imitation import decode_acceptance, fit_imitation
from pipeline.training.imitation_losses import variant_weights
from pipeline.training.launch import available_cpus, planned_processes
from pipeline.training.worker_pool import spawned_pool

MIXED_CIDER_IMAGES = 200  # test images captioned to measure what the mixed schedule costs the full model


class PlannedHead(NamedTuple):
    name: str  # its folder under the heads directory, and its key in the stage's metrics
    variant: str  # loss variant
    fusion: str  # fusion of the cosine target
    mixed: bool  # the mixed schedule (trains the backbone too)


@dataclass(frozen=True)
class ImitationPaths:
    finetuned: Path  # the backbone
    layer_choice: Path  # select_layer's n (imitation.draft_layers: auto)
    best_architecture: Path  # the nas stage's winner, when it exists
    heads: Path  # one folder per trained head
    mixed_backbone: Path  # the mixed schedule's backbone
    features: Path | None = None  # the features stage's cache: the frozen heads train from it


def training_plan(cfg: ImitationConfig) -> list[PlannedHead]:
    """Every head: the loss variants, a ce+cs+kd head per extra fusion of the fusion table (the main fusion's is the
    ce+cs+kd variant, unless that variant is not trained), the mixed schedule."""
    plan = [PlannedHead(variant, variant, cfg.fusion, False) for variant in cfg.variants]
    plan += [
        PlannedHead(head, "ce+cs+kd", kind, False)
        for kind, head in cfg.fusion_table_heads().items()
        if head not in cfg.variants
    ]
    return [*plan, PlannedHead("mixed", "ce+cs+kd", cfg.fusion, True)]


def worker_layout(setting: int | str, heads: int, trainer: TrainerConfig, *, cached: bool) -> tuple[int, int]:
    """(processes, torch threads each). `auto` on CPU: with `cached` features a process per core (a head's 256-wide
    products gain 1.25-1.4x from a second thread: two one-thread heads side by side finished 400 steps each in
    42-57 s, one two-thread head alone in 35-43 s), else a process per two cores (a head that runs the backbone gains
    1.7x). One process on an accelerator (one model copy per device) and under DDP (a worker process would make
    Lightning re-launch the stage from inside it)."""
    cpus, accelerator = available_cpus(), trainer.accelerator
    if planned_processes(trainer) > 1:
        return 1, max(1, cpus)
    if setting != "auto":
        workers = min(int(setting), heads)
    elif accelerator == "cpu":
        workers = min(heads, cpus if cached else cpus // 2)
    else:
        workers = 1
    return max(1, workers), max(1, cpus // max(1, workers))


def weights_fingerprint(model: torch.nn.Module) -> str:
    """SHA-256 over every tensor's bytes: equal fingerprints mean bit-identical weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class HeadJob:
    head: PlannedHead
    loss_weights: dict[str, float]
    params: dict[str, Any]  # Params.model_dump(): plain data, so the job pickles into a worker
    paths: ImitationPaths
    draft_layers: int
    architecture: dict[str, Any]  # ImitationArchitecture.model_dump()
    hidden_size: int
    threads: int
    tracking_run: tracking.RunRef | None
    progress_bar: bool


def head_training_config(cfg: ImitationConfig, planned: PlannedHead) -> ImitationConfig:
    """What `planned` trains with: the frozen heads `cfg` as it is; the mixed schedule, which runs and trains the
    backbone every step, its own step budget and precision."""
    if not planned.mixed:
        return cfg
    update: dict[str, Any] = {"trainer": cfg.trainer.model_copy(update={"precision": cfg.mixed.precision})}
    if cfg.mixed.max_steps is not None:
        update |= {"max_steps": cfg.mixed.max_steps, "val_every_steps": min(cfg.val_every_steps, cfg.mixed.max_steps)}
    return cfg.model_copy(update=update)


def train_head(job: HeadJob) -> dict[str, Any]:
    """Train and save one head from a fresh copy of the fine-tuned backbone; its metrics (in a worker process or
    not)."""
    torch.set_num_threads(job.threads)
    params = Params.model_validate(job.params)
    cfg, planned, n = params.imitation, job.head, job.draft_layers
    splits = load_prepared(params.data.out_dir)
    backbone = load_backbone(job.paths.finetuned)
    adapter = backbone.adapter
    builder = backbone.prompt_builder(params.data.prompts)
    before = None if planned.mixed else weights_fingerprint(backbone.model)
    cfg = head_training_config(cfg, planned)
    torch.manual_seed(params.seed)
    head = ImitationNetwork(job.hidden_size, ImitationArchitecture.model_validate(job.architecture))
    fusion = build_fusion(
        planned.fusion, adapter.hidden_size, fused_layer_count(cfg.fusion_layers, adapter.num_layers, n)
    )
    print(
        f"train_imitation: {planned.name} (n = {n}, weights {job.loss_weights}, {planned.fusion} fusion"
        f"{', mixed schedule' if planned.mixed else ''}, {job.threads} thread(s))",
        flush=True,
    )
    result = fit_imitation(
        backbone.model,
        head,
        fusion,
        builder,
        backbone.image_processor,
        splits,
        cfg,
        draft_layers=n,
        loss_weights=job.loss_weights,
        mixed=planned.mixed,
        seed=params.seed,
        tracking_run=job.tracking_run,
        progress_bar=job.progress_bar,
        features=job.paths.features,
    )
    metrics: dict[str, Any] = dict(result.metrics)
    metrics["parameters"] = float(sum(p.numel() for p in head.parameters()))
    metrics.update({f"flops_{k}": v for k, v in per_token_flops(adapter, n, head).items()})
    if not planned.mixed:
        metrics["backbone_unchanged"] = weights_fingerprint(backbone.model) == before
    if not is_rank_zero():  # under DDP the other processes trained the same head: rank zero measures and saves it
        return {**metrics, "variant": planned.variant, "fusion": planned.fusion}
    if planned.mixed:
        metrics["full_model_test_cider"] = caption_cider(backbone, builder, splits["test"], MIXED_CIDER_IMAGES)
        metrics["finetuned_test_cider"] = caption_cider(
            load_backbone(job.paths.finetuned), builder, splits["test"], MIXED_CIDER_IMAGES
        )
        save_backbone(backbone, job.paths.mixed_backbone)
    save_imitation(
        head,
        job.paths.heads / planned.name,
        {"draft_layers": n, "variant": planned.variant, "fusion": planned.fusion, "mixed": planned.mixed},
    )
    print(
        f"train_imitation: {planned.name} done in {metrics['train_seconds']:.0f} s, "
        f"agreement {metrics.get('val_agreement', float('nan')):.3f}",
        flush=True,
    )
    return {**metrics, "variant": planned.variant, "fusion": planned.fusion}


def train_heads(jobs: list[HeadJob], workers: int) -> dict[str, dict[str, Any]]:
    """Every job's metrics by head name; in `workers` spawned processes, longest jobs first, when workers > 1."""
    if workers == 1:
        return {job.head.name: train_head(job) for job in jobs}
    # the mixed schedule (it trains the backbone) and trainable fusions take longest: start them first
    order = sorted(jobs, key=lambda j: (not j.head.mixed, j.head.fusion == "average"))
    with spawned_pool(workers) as pool:
        futures = {job.head.name: pool.submit(train_head, job) for job in order}
        try:
            return {job.head.name: futures[job.head.name].result() for job in jobs}
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise


def train_imitation_heads(params: Params, paths: ImitationPaths) -> dict[str, Any] | None:
    """Train every planned head (inside the stage's MLflow run: one child run per head, with the head logged as an
    MLflow model and registered) and return the stage's metrics: per head its validation agreement and acceptance,
    FLOPs, and whether the frozen backbone stayed bit-identical; the early-exit draft without imitation as the
    reference. None in the other processes of a DDP run."""
    cfg = params.imitation
    splits = load_prepared(params.data.out_dir)
    backbone = load_backbone(paths.finetuned)
    adapter = backbone.adapter
    n = resolve_draft_layers(cfg.draft_layers, adapter.num_layers, paths.layer_choice, "imitation.draft_layers")
    arch = searched_architecture(cfg.architecture, paths.best_architecture)
    prompts = validation_prompts(
        splits["val"], backbone.prompt_builder(params.data.prompts), backbone.image_processor, cfg.val_decode_prompts
    )
    plan = training_plan(cfg)
    workers, threads = worker_layout(cfg.parallel_heads, len(plan), cfg.trainer, cached=paths.features is not None)
    if workers == 1:
        threads = torch.get_num_threads()
    results: dict[str, Any] = {"draft_layers": n, "num_layers": adapter.num_layers}
    # imitation.val_decode_prompts: 0 decodes nothing, so there is no early-exit reference either
    if prompts and is_rank_zero():
        early = decode_acceptance(backbone.model, None, n, prompts)
        results["no_imitation"] = {
            "val_acceptance_rate": early.acceptance_rate,
            "val_mean_accepted_length": early.mean_accepted_length,
        }
    jobs = []
    for planned in plan:
        weights = variant_weights(planned.variant, cfg.weights)
        run_id = tracking.open_child_run(
            planned.name, {"loss_weights": weights, "fusion": planned.fusion, "mixed": planned.mixed, "draft_layers": n}
        )
        jobs.append(
            HeadJob(
                planned,
                weights,
                params.model_dump(),
                paths,
                n,
                arch.model_dump(),
                adapter.hidden_size,
                threads,
                tracking.run_ref(run_id) if run_id else None,
                progress_bar=workers == 1,
            )
        )
    print(f"train_imitation: {len(jobs)} heads in {workers} process(es) × {threads} thread(s)")
    try:
        trained = train_heads(jobs, workers)
    except BaseException:
        for job in jobs:
            tracking.close_child_run(job.tracking_run.run_id if job.tracking_run else None, failed=True)
        raise
    changed = [name for name, row in trained.items() if row.get("backbone_unchanged") is False]
    if changed:
        for job in jobs:
            tracking.close_child_run(job.tracking_run.run_id if job.tracking_run else None, failed=True)
        raise RuntimeError(f"the frozen backbone changed while training {changed}: a bug, results discarded")
    if not is_rank_zero():
        return None
    for job in jobs:
        run_id = job.tracking_run.run_id if job.tracking_run else None
        if params.tracking.register_models:
            trained[job.head.name].update(
                log_head_model(run_id, paths.heads / job.head.name, params.tracking.experiment)
            )
        scalars = {k: v for k, v in trained[job.head.name].items() if isinstance(v, float)}
        tracking.close_child_run(run_id, scalars)
    results.update(trained)
    results["frozen_backbone_unchanged"] = True
    results["workers"] = {"processes": workers, "threads": threads, "ddp_processes": planned_processes(cfg.trainer)}
    return results


def log_head_model(run_id: str | None, folder: Path, experiment: str) -> dict[str, str]:
    """The saved network in `folder` as an MLflow model in its head's run, registered as
    <experiment>-imitation-<head>: loadable with `mlflow.pytorch.load_model(models:/…)` and, through `as_draft_head`,
    a `SelfSpeculativeDecoder` head. Its registry URI (empty outside a run)."""
    network, extra = load_imitation(folder)
    hidden = network.hidden_size
    logged = tracking.log_torch_model(
        run_id,
        network,
        name="imitation_network",
        signature=tracking.TensorSpecs(
            inputs={"hidden_states": ("float32", (-1, -1, hidden))},  # layer-n states [batch, positions, hidden]
            outputs={"imitation": ("float32", (-1, -1, hidden))},
        ),
        metadata={**extra, "hidden_size": hidden, "architecture": network.architecture.model_dump()},
        registered_name=tracking.registered_model_name(experiment, "imitation", folder.name),
        extra_files=[folder / CONFIG_FILE],
    )
    return {"registered_model": logged.registry_uri or ""} if logged else {}


def summary_line(results: dict[str, Any]) -> str:
    per_head = {
        k: (round(v.get("val_agreement", float("nan")), 3), round(v.get("val_acceptance_rate", float("nan")), 3))
        for k, v in results.items()
        if isinstance(v, dict) and "val_acceptance_rate" in v
    }
    return f"n = {results['draft_layers']}; (agreement, acceptance) per head: {per_head}"
