"""DVC stage `evaluate`: every method on the same test prompts (short captions, long descriptions, VQA), in one
process, so every speed-up is a ratio measured in one run on one machine.

Methods: the full model (decoded token by token by our engine: the reference), `model.generate`; the draft alone without / with the imitation
network; Draft & Verify (the searched skip set); LayerSkip (its backbone, early-exit self-speculation); ours
with each loss variant; ours with the growing d schedule; the mixed-schedule model; ours (ce+cs+kd) and its draft alone
with each other fusion of `imitation.fusion_comparison` (the fusion table); and ours (ce+cs+kd) at
every d of `evaluate.draft_lens` (speed-up by d, paper Fig. 9).

Outputs: `metrics/evaluate.json` (per method: speed-up, tokens/s, acceptance, τ, verification calls, share
identical to its backbone's greedy output, per-task metrics), `plots/acceptance_by_position.csv` (Fig. 5),
`plots/speedup_by_d.csv` (Fig. 9); one nested MLflow run per method.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch

from pipeline import tracking
from pipeline.config import Params
from pipeline.data.examples import load_prepared
from pipeline.data.prompts import PromptBuilder
from pipeline.decoding import AutoregressiveDecoder, ConfidenceStop, DraftAndVerifyDecoder, DraftOnlyDecoder, GrowingDraftLength, SelfSpeculativeDecoder
from pipeline.errors import ModelLoadError
from pipeline.evaluation.caption_metrics import meteor_session
from pipeline.evaluation.methods import caption_prompts, decoder_method, evaluate_methods, generate_method, vqa_prompts
from pipeline.io import atomic_write_csv, atomic_write_json
from pipeline.models.imitation import as_draft_head, load_imitation
from pipeline.models.loading import load_backbone
from stages._common import run_stage

FINETUNED = Path("models/finetuned")
IMITATION = Path("models/imitation")
MIXED_BACKBONE = Path("models/mixed_backbone")
LAYERSKIP = Path("models/layerskip")
DRAFT_VERIFY = Path("models/draft_verify.json")
METRICS = Path("metrics/evaluate.json")
ACCEPTANCE_PLOT = Path("plots/acceptance_by_position.csv")
SPEEDUP_PLOT = Path("plots/speedup_by_d.csv")
FULL = "full model"
MAIN = "ours (ce+cs+kd)"


def fusion_heads(params: Params, heads: dict) -> dict[str, str]:
    """Fusion strategy → the head trained with it for the fusion table, for the fusions whose rows are not
    already ours (ce+cs+kd)."""
    found = {}
    for kind, name in params.imitation.fusion_table_heads().items():
        if name == "ce+cs+kd":
            continue
        if name not in heads:
            raise ModelLoadError(f"{IMITATION / name}: the fusion table's {kind} head is missing; run `dvc repro train_imitation`")
        found[kind] = name
    return found


def build_methods(params: Params, model, eos: int) -> tuple[dict, dict, dict]:
    """Methods, the identity reference of those on another backbone, and what each is (for the report)."""
    d = params.decoding.draft_len
    heads = {}
    for folder in sorted(p for p in IMITATION.iterdir() if (p / "config.json").exists()):
        network, extra = load_imitation(folder)
        heads[folder.name] = (as_draft_head(network.eval()), int(extra["draft_layers"]))
    n = heads["ce+cs+kd"][1] if "ce+cs+kd" in heads else next(iter(heads.values()))[1]
    main_head = heads.get("ce+cs+kd", next(iter(heads.values())))[0]
    growing = GrowingDraftLength(**params.decoding.growing.model_dump())
    found = json.loads(DRAFT_VERIFY.read_text())
    # The reference is the full model decoded token by token by the same engine as every method, so a speed-up
    # measures the algorithm, not call overhead: `model.generate` costs ~10 ms more per call, which dominates
    # 1–3-token VQA answers (its row shows that overhead).
    methods = {
        FULL: decoder_method(AutoregressiveDecoder(model), eos),
        "model.generate": generate_method(model, eos),
        "draft without imitation": decoder_method(DraftOnlyDecoder(model, n), eos),
        "draft with imitation": decoder_method(DraftOnlyDecoder(model, n, main_head), eos),
        "Draft & Verify": decoder_method(DraftAndVerifyDecoder(model, found["skip_layers"], ConfidenceStop(found["threshold"], found.get("max_draft_len", 8))), eos),
        f"SSD, no imitation (d={d})": decoder_method(SelfSpeculativeDecoder(model, n, None, d), eos),
    }
    for variant in params.imitation.variants:
        if variant in heads:
            methods[f"ours ({variant})"] = decoder_method(SelfSpeculativeDecoder(model, n, heads[variant][0], d), eos)
    methods["ours, growing d"] = decoder_method(SelfSpeculativeDecoder(model, n, main_head, growing), eos)
    for kind, name in fusion_heads(params, heads).items():
        head = heads[name][0]
        methods[f"{MAIN}, {kind} fusion"] = decoder_method(SelfSpeculativeDecoder(model, n, head, d), eos)
        methods[f"draft with imitation, {kind} fusion"] = decoder_method(DraftOnlyDecoder(model, n, head), eos)
    for length in params.evaluate.draft_lens:
        if length != d:
            methods[f"{MAIN} d={length}"] = decoder_method(SelfSpeculativeDecoder(model, n, main_head, length), eos)
    identity = {}
    layerskip = load_backbone(LAYERSKIP).model.eval()
    methods["LayerSkip: its full model"] = decoder_method(AutoregressiveDecoder(layerskip), eos)
    methods["LayerSkip"] = decoder_method(SelfSpeculativeDecoder(layerskip, n, None, d), eos)
    identity["LayerSkip"] = "LayerSkip: its full model"
    if "mixed" in heads and MIXED_BACKBONE.exists():
        mixed = load_backbone(MIXED_BACKBONE).model.eval()
        methods["mixed schedule: its full model"] = decoder_method(AutoregressiveDecoder(mixed), eos)
        methods["ours, mixed schedule"] = decoder_method(SelfSpeculativeDecoder(mixed, n, heads["mixed"][0], d), eos)
        identity["ours, mixed schedule"] = "mixed schedule: its full model"
    info = {"draft_layers": n, "draft_len": d, "fusion": params.imitation.fusion, "growing": params.decoding.growing.model_dump(),
            "draft_verify": {k: found[k] for k in ("skip_layers", "threshold")}}
    return methods, identity, info


def main(params: Params) -> None:
    cfg = params.evaluate
    torch.manual_seed(params.seed)
    backbone = load_backbone(FINETUNED)
    model, adapter = backbone.model.eval(), backbone.adapter
    test = load_prepared(params.data.out_dir)["test"]
    builder = PromptBuilder(backbone.tokenizer, params.data.prompts, adapter.image_token_id, adapter.num_image_tokens)
    prompts = caption_prompts(test, builder, backbone.image_processor, cfg.captions, cfg.descriptions)
    prompts += vqa_prompts(test, builder, backbone.image_processor, cfg.vqa)
    methods, identity, info = build_methods(params, model, backbone.tokenizer.eos_token_id)
    print(f"evaluate: {len(methods)} methods × {len(prompts)} test prompts × {cfg.repeats} repeat(s), n = {info['draft_layers']}")
    with tracking.stage_run("evaluate", params.tracking.experiment, params.model_dump(include={"evaluate", "decoding"})):
        with torch.no_grad(), (meteor_session() if cfg.meteor else contextlib.nullcontext()) as meteor:
            results = evaluate_methods(methods, prompts, backbone.tokenizer, reference=FULL, identity_references=identity,
                                       repeats=cfg.repeats, meteor=meteor or False, spice=cfg.spice)
        for name, row in results.items():
            with tracking.nested_run(name, {"method": name}, tags={"method": name}):
                flat = {k: v for k, v in row.items() if isinstance(v, float)}
                for task, scores in row.get("tasks", {}).items():
                    flat.update({f"{task}_{k}": v for k, v in scores.items() if isinstance(v, float)})
                flat.update({f"speedup_{task}": v for task, v in row["speedup_by_task"].items()})
                tracking.log_metrics(flat)
        acceptance = [{"method": name, "position": i + 1, "acceptance": rate}
                      for name, row in results.items() if name.startswith("ours") and "d=" not in name and "fusion" not in name
                      for i, rate in enumerate(row.get("acceptance_by_position", []))]
        by_d = sorted(((info["draft_len"] if name == MAIN else int(name.split("d=")[1]), row) for name, row in results.items()
                       if name == MAIN or name.startswith(f"{MAIN} d=")), key=lambda p: p[0])
        speedup = [{"d": d, "speedup": row["speedup"], "acceptance_rate": row.get("acceptance_rate", 0.0),
                    "mean_accepted_length": row.get("mean_accepted_length", 0.0)} for d, row in by_d]
        summary = {**info, "prompts": {t: sum(p["task"] == t for p in prompts) for t in ("caption", "description", "vqa")},
                   "threads": torch.get_num_threads(), "methods": results}
        atomic_write_json(METRICS, summary)
        atomic_write_csv(ACCEPTANCE_PLOT, acceptance)
        atomic_write_csv(SPEEDUP_PLOT, speedup)
    for name, row in results.items():
        print(f"  {name:34s} speed-up {row['speedup']:.2f}×  identical {row['identical_share']:.0%}  "
              f"CIDEr {row.get('cider', float('nan')):.3f}  accept {row.get('acceptance_rate', float('nan')):.2f}")


if __name__ == "__main__":
    run_stage(main)
