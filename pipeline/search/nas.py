"""Imitation-network architecture search (paper Appendix B) as a Ray Tune trainable.

A trial builds the sampled architecture, trains it briefly on the frozen backbone at the chosen `n` with the
same `fit_imitation` the `train_imitation` stage calls (ce+cs+kd, params' λ), and reports at every
validation: the draft's top-1 agreement with the full model on validation tokens, the decoded acceptance
rate, the draft's price per token and

    score = accuracy − cost_weight · draft_cost_ratio.

draft_cost_ratio is one draft token (n layers + network + LM head) over one full-model token, by `nas.cost`:
measured latency at batch 1 (`draft_step_cost`, the default: what decoding pays on the machine that runs it) or
FLOPs (torch's FlopCounterMode). Both are reported. FLOPs alone misprice a small model on a CPU, which pays per
operator: there a second linear layer costs two to three times its FLOPs share (`pipeline.evaluation.draft_latency`).
ASHA stops the trials whose score trails at a rung.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pipeline import tracking
from pipeline.config import ImitationArchitecture, NASConfig, Params
from pipeline.evaluation.draft_latency import draft_step_cost, draft_step_costs
from pipeline.evaluation.flops import per_token_flops
from pipeline.evaluation.layer_choice import resolve_draft_layers
from pipeline.models.adapters import BackboneAdapter
from pipeline.models.imitation import ImitationNetwork, as_draft_head
from pipeline.models.loading import load_backbone
from pipeline.search.ray_runtime import resolve_address
from pipeline.search.space import SearchSpace, load_search_space
from pipeline.search.stage_search import run_stage_search
from pipeline.search.trial_setup import TrialContext, load_for_trial, train_trial_head
from pipeline.search.tuning import SearchSpec, inputs_fingerprint, result_rows
from pipeline.training.imitation import ValidationReporter
from pipeline.training.imitation_losses import variant_weights
from pipeline.training.trainer import torch_threads

# Keys a NAS search space may name: the architecture's fields
ARCHITECTURE_KEYS = set(ImitationArchitecture.model_fields)
REPORTED = [
    "score",
    "agreement",
    "acceptance_rate",
    "mean_accepted_length",
    "agreement_early_exit",
    "draft_cost_ratio",
    "latency_cost_ratio",
    "flops_cost_ratio",
    "flops_imitation",
    "flops_draft",
    "parameters",
    "step",
]
PAPER_CHOICE = {"num_linear": 2, "attention": False}  # the paper's NAS result: two linear layers, no attention


def architecture(base: ImitationArchitecture, sampled: dict[str, Any]) -> ImitationArchitecture:
    """`base` (params' architecture) with the fields a trial sampled."""
    return ImitationArchitecture.model_validate(
        {**base.model_dump(), **{k: v for k, v in sampled.items() if k in ARCHITECTURE_KEYS}}
    )


def score(accuracy: float, draft_cost_ratio: float, cost_weight: float) -> float:
    return accuracy - cost_weight * draft_cost_ratio


# Fields that change no work at inference: architectures differing only in them cost the same
LATENCY_FREE_KEYS = {"dropout"}


def latency_key(arch: ImitationArchitecture) -> str:
    return json.dumps({k: v for k, v in arch.model_dump().items() if k not in LATENCY_FREE_KEYS}, sort_keys=True)


def space_architectures(space: SearchSpace, base: ImitationArchitecture) -> list[ImitationArchitecture] | None:
    """Every architecture of `space` that costs differently at inference (one per `latency_key`), or None when a field
    that does is sampled from a continuous range."""
    keys = sorted(k for k in space.space if k not in LATENCY_FREE_KEYS)
    try:
        options = [space.values(k) for k in keys]
    except ValueError:
        return None
    found: dict[str, ImitationArchitecture] = {}
    for values in itertools.product(*options):
        arch = architecture(base, dict(zip(keys, values, strict=True)))
        found.setdefault(latency_key(arch), arch)
    return list(found.values())


def price_architectures(
    adapter: BackboneAdapter, n: int, architectures: list[ImitationArchitecture], cfg: NASConfig, threads: int
) -> dict[str, float]:
    """Each architecture's draft step over a full step, timed here in one interleaved run on a trial's thread count
    (`draft_step_costs`): trials timing themselves would each be timed beside another trial's training, whose load on
    the shared caches and memory moved the prices of the same architectures by more than they differ (two runs on a
    bit-identical backbone: 0.146 / 0.162 for two linear layers + attention, 0.135 / 0.141 for one, and the winner
    flipped; timed here, 0.177 / 0.186 and 0.158 / 0.168, the same winner)."""
    heads = {latency_key(a): as_draft_head(ImitationNetwork(adapter.hidden_size, a).eval()) for a in architectures}
    with torch_threads(threads):
        return draft_step_costs(adapter, n, heads, repeats=cfg.latency_repeats)


def nas_trial(config: dict[str, Any], context: TrialContext) -> None:
    from ray import tune

    params = context.config
    nas, imitation = params.nas, params.imitation
    loaded = load_for_trial(context)
    backbone, n = loaded.backbone, context.draft_layers
    adapter = backbone.adapter
    arch = architecture(imitation.architecture, config)
    torch.manual_seed(params.seed)
    head = ImitationNetwork(adapter.hidden_size, arch)
    flops = per_token_flops(adapter, n, head)
    latency = context.latency_prices.get(latency_key(arch))
    if latency is None:  # a continuous space, or trials on a cluster's machines: priced where the draft would run
        latency = draft_step_cost(adapter, n, as_draft_head(head.eval()), repeats=nas.latency_repeats)
        head.train()
    costs = {"latency_cost_ratio": latency, "flops_cost_ratio": flops["draft_cost_ratio"]}
    fixed = {
        "flops_imitation": flops["imitation"],
        "flops_draft": flops["draft"],
        **costs,
        "draft_cost_ratio": costs[f"{nas.cost}_cost_ratio"],
        "parameters": float(sum(p.numel() for p in head.parameters())),
    }

    def report(step: int, metrics: dict[str, float]) -> None:
        accuracy = metrics.get(nas.accuracy, 0.0)
        tune.report(
            {
                **{
                    k: metrics[k]
                    for k in ("agreement", "acceptance_rate", "mean_accepted_length", "agreement_early_exit")
                    if k in metrics
                },
                **fixed,
                "step": step,
                "score": score(accuracy, fixed["draft_cost_ratio"], nas.cost_weight),
            }
        )

    updates = {
        "max_steps": nas.max_steps,
        "val_every_steps": nas.report_every_steps,
        "val_batches": nas.val_batches,
        "val_decode_prompts": nas.val_decode_prompts,
        "optimizer": imitation.optimizer.model_copy(
            update={"warmup_steps": min(imitation.optimizer.warmup_steps, max(0, nas.max_steps // 4))}
        ),
    }
    weights = variant_weights("ce+cs+kd", imitation.weights)
    train_trial_head(
        loaded,
        params,
        head,
        n,
        weights,
        updates,
        callbacks=[ValidationReporter(report)],
        features_dir=context.features_dir,
    )


def max_reports(cfg: NASConfig) -> int:
    return max(1, cfg.max_steps // cfg.report_every_steps)


def asha_scheduler(cfg: NASConfig) -> Any:
    """ASHA in units of reports (one validation each): trials whose score trails at a rung stop there."""
    from ray.tune.schedulers import ASHAScheduler

    reports = max_reports(cfg)
    return ASHAScheduler(
        time_attr="training_iteration",
        max_t=reports,
        grace_period=min(cfg.grace_reports, reports),
        reduction_factor=cfg.reduction_factor,
    )


@dataclass
class NASOutcome:
    draft_layers: int
    rows: list[dict[str, Any]]  # one per trial, best first: reports/nas_trials.csv
    summary: dict[str, Any]  # the winner against the paper's choice: metrics/nas.json
    best: dict[str, Any]  # the architecture train_imitation builds: models/nas/best_architecture.json

    def headline(self) -> str:
        best = self.summary["best"]
        agreement = best["agreement"] if best.get("agreement") is not None else float("nan")
        return (
            f"nas: best of {len(self.rows)} trials at n = {self.draft_layers}: {self.best['architecture']} score "
            f"{best['score']:.3f} (agreement {agreement:.3f}, {self.summary['cost']} cost ratio "
            f"{best['draft_cost_ratio']:.3f})"
        )


def summarise(
    results: Any,
    cfg: NASConfig,
    base: ImitationArchitecture,
    draft_layers: int,
    latency_prices: dict[str, float] | None = None,
) -> NASOutcome:
    """The trial table, the winner (last reported score) and the paper's choice among the trials, if it was one."""
    rows = sorted(
        result_rows(results, REPORTED), key=lambda r: -(r["score"] if r["score"] is not None else float("-inf"))
    )
    best = results.get_best_result(metric="score", mode="max", scope="last")
    winner = architecture(base, best.config)
    paper = [
        r for r in rows if all(r.get(f"config.{k}") == v for k, v in PAPER_CHOICE.items()) and r["score"] is not None
    ]
    summary = {
        "draft_layers": draft_layers,
        "cost": cfg.cost,
        "cost_weight": cfg.cost_weight,
        # stage: every architecture timed in one run before the search (`latency_prices`); trial: each its own draft
        "latency_timed_by": "stage" if latency_prices else "trial",
        "latency_prices": latency_prices or {},
        "trials": len(rows),
        "failed_trials": sum(bool(r["error"]) for r in rows),
        "stopped_early": sum(r["reports"] < max_reports(cfg) for r in rows if not r["error"]),
        "best": {k: best.metrics.get(k) for k in REPORTED} | {"architecture": best.config},
        "paper_choice": (
            {k: paper[0][k] for k in REPORTED}
            | {"architecture": {k.removeprefix("config."): v for k, v in paper[0].items() if k.startswith("config.")}}
        )
        if paper
        else None,
    }
    chosen = {"architecture": winner.model_dump(), "score": best.metrics["score"], "draft_layers": draft_layers}
    return NASOutcome(draft_layers, rows, summary, chosen)


def run_nas(
    params: Params,
    model_dir: Path,
    layer_choice: Path,
    write: Callable[[NASOutcome], None],
    features_dir: Path | None = None,
) -> NASOutcome:
    """Search imitation architectures at the chosen n on Ray Tune; `write(outcome)` runs inside the stage's MLflow run
    (the stage's outputs, logged as its artifacts). Paths are relative to the repository root."""
    cfg = params.nas
    root = tracking.repo_root()
    model_dir, data_dir = (root / model_dir).resolve(), (root / params.data.out_dir).resolve()
    space = load_search_space(root / params.nas.search_space, allowed_keys=ARCHITECTURE_KEYS)
    adapter = load_backbone(model_dir).adapter
    n = resolve_draft_layers(
        params.imitation.draft_layers, adapter.num_layers, root / layer_choice, "imitation.draft_layers"
    )
    threads = max(1, int(params.ray.cpus_per_trial))
    architectures = space_architectures(space, params.imitation.architecture)
    # The stage's machine is the trials' only on the local instance, and on its CPUs only without GPUs per trial
    local = resolve_address(params.ray)[0] is None and not params.ray.gpus_per_trial
    prices = (
        price_architectures(adapter, n, architectures, cfg, threads)
        if cfg.cost == "latency" and local and architectures is not None
        else {}
    )
    features = (root / features_dir).resolve() if features_dir else None
    context = TrialContext(
        str(model_dir),
        str(data_dir),
        params.model_dump(),
        n,
        threads=threads,
        features_dir=str(features or ""),
        latency_prices=prices,
    )
    settings = params.model_dump(include={"seed", "nas", "imitation"}) | {
        "space": space.space,
        "first": space.evaluate_first,
        "n": n,
    }
    spec = SearchSpec(
        name="nas",
        fingerprint=inputs_fingerprint(settings, [model_dir, data_dir, *([features] if features else [])]),
        metric="score",
        mode="max",
        num_samples=cfg.num_samples,
        seed=params.seed,
        max_failures=params.ray.max_failures,
        max_concurrent_trials=cfg.max_concurrent_trials,
        scheduler=asha_scheduler(cfg),
        reports_when_complete=max_reports(cfg),
    )
    return run_stage_search(
        "nas",
        params,
        nas_trial,
        context,
        space,
        spec,
        {"draft_layers": str(n)},
        lambda results: summarise(results, cfg, params.imitation.architecture, n, prices),
        write,
    )
