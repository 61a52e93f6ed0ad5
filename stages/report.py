"""DVC stage `report`: `reports/results.md` — the counterparts of the paper's tables from the metrics files — and
its figures (PNG), all logged to MLflow. The paper's qualitative claims are checked against our numbers, not
assumed: each check prints what was compared and whether it held.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from pipeline import tracking
from pipeline.config import Params
from pipeline.io import atomic_write_text
from pipeline.report import line_plot, markdown_table
from stages._common import run_stage

EVALUATE = Path("metrics/evaluate.json")
IMITATION = Path("metrics/imitation.json")
NAS = Path("metrics/nas.json")
LAYER_CHOICE = Path("metrics/layer_choice.json")
SWEEP_TABLE = Path("reports/sweep.csv")
REPORT = Path("reports/results.md")
FIGURES = Path("reports/figures")
MAIN = "ours (ce+cs+kd)"
TABLE1 = ["full model", "model.generate", "draft without imitation", "draft with imitation", "Draft & Verify", "LayerSkip",
          "ours (ce)", "ours (ce+cs)", MAIN, "ours, growing d", "ours, mixed schedule"]


def _get(row: dict, *keys, default=None):
    for key in keys:
        if not isinstance(row, dict) or key not in row:
            return default
        row = row[key]
    return row


def table1(methods: dict) -> str:
    rows = []
    for name in [m for m in TABLE1 if m in methods]:
        r = methods[name]
        cap = _get(r, "tasks", "caption", default={})
        rows.append([name, cap.get("bleu4"), cap.get("meteor"), cap.get("rouge_l"), cap.get("cider"),
                     cap.get("spice", "n/a"), _get(r, "tasks", "description", "cider"),
                     f"{r['speedup']:.2f}×", f"{r['tokens_per_second']:.0f}", r.get("acceptance_rate"),
                     r.get("mean_accepted_length"), f"{100 * r['identical_share']:.0f} %"])
    headers = ["method", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "SPICE", "descr. CIDEr", "speed-up", "tok/s",
               "acceptance", "τ", "identical"]
    return markdown_table(headers, rows)


def table_vqa(methods: dict) -> str:
    rows = []
    for name in [m for m in TABLE1 if m in methods]:
        vqa = _get(methods[name], "tasks", "vqa", default={})
        by_type = ", ".join(f"{k.removeprefix('vqa_accuracy_')} {v:.2f}" for k, v in sorted(vqa.items()) if k.startswith("vqa_accuracy_"))
        rows.append([name, vqa.get("vqa_accuracy"), by_type or "–", f"{methods[name]['speedup_by_task'].get('vqa', float('nan')):.2f}×"])
    return markdown_table(["method", "VQA accuracy", "by answer type", "speed-up on VQA"], rows)


def table_n(sweep_rows: list[dict]) -> str:
    """Best d per (n, λ): the n ablation."""
    best: dict[tuple[str, str], dict] = {}
    for row in sweep_rows:
        if not row.get("speedup"):
            continue
        key = (row["config.draft_layers"], row.get("loss_label", row.get("config.loss")))
        if key not in best or float(row["speedup"]) > float(best[key]["speedup"]):
            best[key] = row
    rows = [[n, loss, r["config.draft_len"], f"{float(r['speedup']):.2f}×", float(r["acceptance_rate"]), float(r["mean_accepted_length"]),
             float(r["cider_draft"]), float(r["cider_ssd"]), float(r["cider_full"]), float(r["draft_cost_ratio"])]
            for (n, loss), r in sorted(best.items(), key=lambda kv: (int(kv[0][0]), kv[0][1]))]
    return markdown_table(["n", "λ", "best d", "speed-up", "acceptance", "τ", "CIDEr draft alone", "CIDEr SSD", "CIDEr full",
                           "draft cost ratio"], rows)


def fusion_rows(methods: dict, imitation: dict, heads: dict[str, str]) -> list[dict]:
    """Per fusion strategy (`heads`: fusion → head, `ImitationConfig.fusion_table_heads`): its ce+cs+kd head's SSD
    row, draft-alone row and validation metrics; fusions not evaluated are left out."""
    rows = []
    for kind, head in heads.items():
        main = head == "ce+cs+kd"
        ssd, draft = (MAIN, "draft with imitation") if main else (f"{MAIN}, {kind} fusion", f"draft with imitation, {kind} fusion")
        val = imitation.get(head)
        if ssd in methods and draft in methods and val:
            rows.append({"fusion": kind, "ssd": methods[ssd], "draft": methods[draft], "val": val})
    return rows


def table_fusion(rows: list[dict]) -> str:
    table = [[r["fusion"], r["val"].get("val_agreement"), f"{r['ssd']['speedup']:.2f}×", r["ssd"].get("acceptance_rate"),
              r["ssd"].get("mean_accepted_length"), _get(r["draft"], "tasks", "caption", "cider"), _get(r["draft"], "tasks", "caption", "bleu4"),
              _get(r["draft"], "tasks", "description", "cider"), f"{100 * r['ssd']['identical_share']:.0f} %"] for r in rows]
    return markdown_table(["fusion", "val agreement", "speed-up", "acceptance", "τ", "draft-alone CIDEr", "draft-alone BLEU-4",
                           "draft-alone descr. CIDEr", "SSD identical"], table)


def claims(methods: dict) -> list[tuple[str, bool, str]]:
    """The paper's qualitative claims, each checked on our numbers: (claim, held, evidence)."""
    out = []
    with_, without = methods.get("draft with imitation"), methods.get("draft without imitation")
    if with_ and without:
        a, b = _get(with_, "tasks", "caption", "cider", default=0.0), _get(without, "tasks", "caption", "cider", default=0.0)
        out.append(("draft with imitation ≫ draft without (caption CIDEr of the draft alone)", a > b, f"{a:.3f} vs {b:.3f}"))
    ours = methods.get(MAIN)
    for rival in ("LayerSkip", "Draft & Verify"):
        if ours and rival in methods:
            a, b = ours["speedup"], methods[rival]["speedup"]
            out.append((f"ours faster than {rival}", a > b, f"{a:.2f}× vs {b:.2f}×"))
    lossless = [m for m in methods if m.startswith(("ours", "SSD", "LayerSkip", "Draft & Verify")) and "its full model" not in m]
    identical = {m: methods[m]["identical_share"] for m in lossless}
    out.append(("lossless methods identical to their full model's greedy output", all(v == 1.0 for v in identical.values()),
                ", ".join(f"{m} {100 * v:.0f} %" for m, v in identical.items() if v < 1.0) or f"all {len(identical)} at 100 %"))
    return out


def figures(evaluation: dict) -> list[Path]:
    made = []
    methods = evaluation["methods"]
    curves = {name: row["acceptance_by_position"] for name, row in methods.items()
              if name.startswith("ours") and "d=" not in name and row.get("acceptance_by_position")}
    # Both figures are DVC outs: written even when a (tiny) run decoded no draft rounds, saying so
    depth = max((len(c) for c in curves.values()), default=0)
    line_plot(FIGURES / "acceptance_by_position.png", list(range(1, depth + 1)),
              {k: v + [float("nan")] * (depth - len(v)) for k, v in curves.items()},
              xlabel="position in the draft round", ylabel="acceptance rate",
              title="acceptance by draft position (Fig. 5)" + ("" if curves else ": no draft rounds in this run"))
    made.append(FIGURES / "acceptance_by_position.png")
    by_d = sorted((evaluation["draft_len"] if n == MAIN else int(n.split("d=")[1]), r["speedup"])
                  for n, r in methods.items() if n == MAIN or n.startswith(f"{MAIN} d="))
    line_plot(FIGURES / "speedup_by_d.png", [d for d, _ in by_d], {MAIN: [s for _, s in by_d]},
              xlabel="draft length d", ylabel="speed-up over the full model", title="speed-up by draft length (Fig. 9)")
    made.append(FIGURES / "speedup_by_d.png")
    return made


def main(params: Params) -> None:
    evaluation = json.loads(EVALUATE.read_text())
    methods = evaluation["methods"]
    sweep_rows = list(csv.DictReader(SWEEP_TABLE.open())) if SWEEP_TABLE.exists() else []
    nas = json.loads(NAS.read_text()) if NAS.exists() else None
    imitation = json.loads(IMITATION.read_text()) if IMITATION.exists() else {}
    spice_note = _get(methods, "full model", "tasks", "caption", "spice_unavailable")
    checks = claims(methods)
    made = figures(evaluation)
    prompts = evaluation["prompts"]
    parts = [
        "# Results",
        f"Test split: {prompts['caption']} caption images, {prompts['description']} descriptions, {prompts['vqa']} VQA questions; "
        f"draft layers n = {evaluation['draft_layers']}, d = {evaluation['draft_len']} (growing: {evaluation['growing']}); "
        f"CPU, {evaluation['threads']} threads, all methods timed in one process (`dvc repro evaluate`). "
        "Speed-up = per-token latency of the full model (decoded token by token by the same engine) ÷ the method's; "
        "the `model.generate` row shows Hugging Face's own greedy decoding against that reference. CIDEr is CIDEr-D (0–10 scale; the paper ×100).",
        "## Table 1 — methods (captions; descriptions' CIDEr; speed over all tasks)",
        table1(methods),
        "Draft-alone rows are lossy (fast, but not the full model's text); the others are checked token for token against "
        "their backbone's greedy output (LayerSkip and the mixed schedule change the backbone, so their text is their own model's).",
    ]
    if spice_note:
        parts.append(f"SPICE: unavailable — {spice_note}")
    parts += ["## The paper's claims, checked", markdown_table(["claim", "holds here", "evidence"], [[c, "yes" if h else "**no**", e] for c, h, e in checks])]
    variants = [v for v in ("ce", "ce+cs", "ce+cs+kd", "mixed") if v in imitation]
    if variants:
        parts += ["## Loss variants (validation, train_imitation)",
                  f"Cosine target: `{params.imitation.fusion}` fusion of the last {params.imitation.fusion_layers} layers.",
                  markdown_table(["variant", "val agreement", "val acceptance", "val τ"],
                                 [[v, imitation[v].get("val_agreement"), imitation[v].get("val_acceptance_rate"),
                                   imitation[v].get("val_mean_accepted_length")] for v in variants])]
    fusions = fusion_rows(methods, imitation, params.imitation.fusion_table_heads())
    if fusions:
        fastest = max(fusions, key=lambda r: r["ssd"]["speedup"])
        best_draft = max(fusions, key=lambda r: _get(r["draft"], "tasks", "caption", "cider", default=0.0))
        parts += ["## Fusion strategies (Table 5 counterpart, test)",
                  f"One ce+cs+kd imitation network per way of fusing the last {params.imitation.fusion_layers} layers into the cosine "
                  "target (same steps, seed and architecture); SSD at the default d, and the draft alone. "
                  f"Fastest: `{fastest['fusion']}` ({fastest['ssd']['speedup']:.2f}×); best draft alone: `{best_draft['fusion']}` "
                  f"(CIDEr {_get(best_draft['draft'], 'tasks', 'caption', 'cider', default=0.0):.3f}).",
                  table_fusion(fusions)]
    if sweep_rows:
        parts += ["## Draft layers n (Table 6 counterpart, validation, from the sweep)", table_n(sweep_rows),
                  "![Pareto](figures/sweep_pareto.png)"]
    parts += ["## VQA (Table 9 counterpart)", table_vqa(methods)]
    if nas:
        parts += ["## Architecture search", f"Best: {nas['best']['architecture']} (score {nas['best']['score']:.3f}, agreement "
                  f"{nas['best']['agreement']:.3f}, draft cost ratio {nas['best']['draft_cost_ratio']:.3f}); the paper's choice (two linear "
                  f"layers): " + (f"agreement {nas['paper_choice']['agreement']:.3f}, cost ratio {nas['paper_choice']['draft_cost_ratio']:.3f}"
                                  if nas.get("paper_choice") else "not among the trials") + ". All trials: `reports/nas_trials.csv`."]
    parts += ["## Figures"] + [f"![{p.stem}](figures/{p.name})" for p in made]
    if (FIGURES / "layer_reward.png").exists():
        parts.append("![layer choice](figures/layer_reward.png)")
    atomic_write_text(REPORT, "\n\n".join(parts) + "\n")
    with tracking.stage_run("report", params.tracking.experiment, {}):
        tracking.log_metrics({f"claim_{i}": float(h) for i, (_, h, _) in enumerate(checks)})
        for path in [REPORT, *made]:
            tracking.log_artifact(path)
    for claim, held, evidence in checks:
        print(f"{'✓' if held else '✗'} {claim}: {evidence}")


if __name__ == "__main__":
    run_stage(main)
