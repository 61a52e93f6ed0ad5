"""The method registry: every decoding method the pipeline compares, as typed values built in one place.

A `MethodSpec` says what a method *is* — its kind, the backbone that decodes, the imitation network that drafts,
the draft depth n and the draft-length policy — and `key` names it stably (file keys, MLflow tags). Its `label`
is for people only: no code reads a label back. `evaluate` builds its methods with `evaluation_plan`, the
report selects rows with the plan's selectors (Table 1, the fusion table, Fig. 5, Fig. 9), the sweep, the
decoding benchmark and the caption command build theirs with the constructors below, and
`pipeline.evaluation.method_runner` turns any spec into something that decodes.

This module is torch-free, so the report stage reads the plan back from `metrics/evaluate.json` without torch.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from pipeline.config import Params
from pipeline.errors import PipelineError

MethodKind = Literal[
    "autoregressive",
    "hf_generate",
    "hf_early_exit",
    "draft_only",
    "ssd",
    "draft_verify",
    "separate_draft",
    "hf_assisted",
]
DraftLength = int | Literal["growing"]

FINETUNED = "finetuned"  # the fine-tuned backbone; the other backbones are LayerSkip's and the mixed schedule's
LAYERSKIP = "layerskip"
MIXED = "mixed"
EARLY_EXIT = "early-exit"  # how a key names the head-less draft
LANGUAGE_DRAFT = "language-draft"  # the separate language-only draft model (Gagrani et al.), models/language_draft
# lossless by construction: checked token for token
VERIFIED_KINDS = ("ssd", "draft_verify", "hf_early_exit", "separate_draft", "hf_assisted")


@dataclass(frozen=True)
class MethodSpec:
    kind: MethodKind
    label: str = ""  # display only
    backbone: str = FINETUNED
    head: str | None = None  # an imitation network (a folder of models/imitation); None: the early-exit draft
    draft_layers: int | None = None  # n: the draft runs layers 0..n-1 (early-exit kinds)
    draft_len: DraftLength | None = None  # d: fixed, or "growing" (decoding.growing); None: the kind has none
    skip_layers: tuple[int, ...] = ()  # Draft & Verify: the layers its draft skips
    threshold: float | None = None  # Draft & Verify: the confidence stop's threshold
    max_draft_len: int | None = None  # Draft & Verify: the confidence stop's longest round
    draft_model: str | None = None  # separate_draft / hf_assisted: the separate draft model that proposes

    @property
    def key(self) -> str:
        """A stable identifier, e.g. `ssd:ce+cs+kd:n1:d3`, `layerskip:full`, `draft-verify:skip6-8:t0.6`."""
        head = self.head or EARLY_EXIT
        if self.kind == "autoregressive":
            name = "full"
        elif self.kind == "hf_generate":
            name = "generate"
        elif self.kind == "hf_early_exit":
            name = f"hf-early-exit:n{self.draft_layers}:d{self.draft_len}"
        elif self.kind == "draft_only":
            name = f"draft:{head}:n{self.draft_layers}"
        elif self.kind == "ssd":
            name = f"ssd:{head}:n{self.draft_layers}:d{self.draft_len}"
        elif self.kind == "separate_draft":
            name = f"separate:{self.draft_model}:d{self.draft_len}"
        elif self.kind == "hf_assisted":
            name = f"hf-assisted:{self.draft_model}:d{self.draft_len}"
        else:
            name = f"draft-verify:skip{'-'.join(map(str, self.skip_layers))}:t{self.threshold:g}"
        return name if self.backbone == FINETUNED else f"{self.backbone}:{name}"

    @property
    def verified(self) -> bool:
        """The full model verifies every token: greedy output must equal the backbone's own, token for token."""
        return self.kind in VERIFIED_KINDS

    @property
    def identity_reference(self) -> MethodSpec:
        """What this method's output is compared with, token for token: a verified method must reproduce its own
        backbone decoded token by token; any other (a draft alone, another backbone's own full model) is compared with
        the fine-tuned model, which says how far its text strays from that model's."""
        return autoregressive(self.backbone if self.verified else FINETUNED)

    @property
    def prefill_source(self) -> MethodSpec | None:
        """The method whose first-token-only timing prices this one's prefill: a draft alone prefills through its own
        layers; the full model and the methods that prefill as it does (layers 0..L of the same architecture, on any
        backbone: self-speculation, Draft & Verify) by the fine-tuned full model's. None for the others (Hugging
        Face's generate, a separate draft model that prefills too): their decode phase is not split off."""
        if self.kind == "draft_only":
            return self
        if self.kind in ("autoregressive", "ssd", "draft_verify"):
            return autoregressive()
        return None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "skip_layers": list(self.skip_layers)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MethodSpec:
        return cls(**{**data, "skip_layers": tuple(data.get("skip_layers", ()))})


def autoregressive(backbone: str = FINETUNED, label: str = "full model") -> MethodSpec:
    return MethodSpec("autoregressive", label, backbone)


def hf_generate(backbone: str = FINETUNED, label: str = "model.generate") -> MethodSpec:
    return MethodSpec("hf_generate", label, backbone)


def hf_early_exit(draft_layers: int, draft_len: int, label: str = "", backbone: str = FINETUNED) -> MethodSpec:
    return MethodSpec("hf_early_exit", label, backbone, draft_layers=draft_layers, draft_len=draft_len)


def draft_only(head: str | None, draft_layers: int, label: str = "", backbone: str = FINETUNED) -> MethodSpec:
    return MethodSpec("draft_only", label, backbone, head=head, draft_layers=draft_layers)


def ssd(
    head: str | None, draft_layers: int, draft_len: DraftLength, label: str = "", backbone: str = FINETUNED
) -> MethodSpec:
    return MethodSpec("ssd", label, backbone, head=head, draft_layers=draft_layers, draft_len=draft_len)


def separate_draft(draft_model: str, draft_len: DraftLength, label: str = "") -> MethodSpec:
    return MethodSpec("separate_draft", label, draft_model=draft_model, draft_len=draft_len)


def assisted(draft_model: str, draft_len: int, label: str = "") -> MethodSpec:
    """Hugging Face's assisted generation (`assistant_model`) with a separate draft model."""
    return MethodSpec("hf_assisted", label, draft_model=draft_model, draft_len=draft_len)


def draft_verify(
    skip_layers: Iterable[int],
    threshold: float,
    max_draft_len: int,
    label: str = "Draft & Verify",
    backbone: str = FINETUNED,
) -> MethodSpec:
    return MethodSpec(
        "draft_verify",
        label,
        backbone,
        skip_layers=tuple(skip_layers),
        threshold=threshold,
        max_draft_len=max_draft_len,
    )


@dataclass(frozen=True)
class EvaluationPlan:
    """The methods `evaluate` decodes, and which of them form each table and figure of the report."""

    methods: tuple[MethodSpec, ...]
    main_head: str  # the imitation network of "ours": Table 1's draft with imitation, growing d, Fig. 9
    variants: tuple[str, ...]  # the loss-variant heads (imitation.variants that were trained)
    draft_layers: int
    draft_len: int  # the default fixed d
    fusion_heads: dict[str, str] = field(default_factory=dict)  # fusion → its ce+cs+kd head (the fusion table)

    @property
    def reference(self) -> MethodSpec:
        """The full model decoded token by token by our engine: every speed-up is relative to it."""
        return autoregressive()

    @property
    def main(self) -> MethodSpec:
        return self._find("ssd", FINETUNED, self.main_head, self.draft_len)

    def _find(
        self, kind: str, backbone: str, head: str | None = None, draft_len: DraftLength | None = None
    ) -> MethodSpec:
        for spec in self.methods:
            if (spec.kind, spec.backbone, spec.head) == (kind, backbone, head) and (
                draft_len is None or spec.draft_len == draft_len
            ):
                return spec
        raise KeyError(f"no {kind} method on {backbone} with head {head} and d {draft_len} in the plan")

    def _present(self, candidates: Iterable[tuple[str, str, str | None, DraftLength | None]]) -> list[MethodSpec]:
        found = []
        for candidate in candidates:
            try:
                found.append(self._find(*candidate))
            except KeyError:
                continue
        return found

    def table1(self) -> list[MethodSpec]:
        """Paper Table 1's rows, in its order: the full model, the drafts alone, the baselines, ours."""
        d = self.draft_len
        return self._present(
            [
                ("autoregressive", FINETUNED, None, None),
                ("hf_generate", FINETUNED, None, None),
                ("draft_only", FINETUNED, None, None),
                ("draft_only", FINETUNED, self.main_head, None),
                ("draft_verify", FINETUNED, None, None),
                ("separate_draft", FINETUNED, None, d),
                ("hf_assisted", FINETUNED, None, d),
                ("ssd", LAYERSKIP, None, d),
                *[("ssd", FINETUNED, variant, d) for variant in self.variants],
                ("ssd", FINETUNED, self.main_head, "growing"),
                ("ssd", MIXED, MIXED, d),
            ]
        )

    def ours(self) -> list[MethodSpec]:
        """Our method as trained (each loss variant at the default d, growing d, the mixed schedule): Fig. 5's
        curves."""
        d = self.draft_len
        return self._present(
            [
                *[("ssd", FINETUNED, variant, d) for variant in self.variants],
                ("ssd", FINETUNED, self.main_head, "growing"),
                ("ssd", MIXED, MIXED, d),
            ]
        )

    def by_draft_len(self) -> list[MethodSpec]:
        """Ours (the main head) at every fixed d, shortest first: Fig. 9."""
        fixed = [
            s
            for s in self.methods
            if (s.kind, s.backbone, s.head) == ("ssd", FINETUNED, self.main_head) and isinstance(s.draft_len, int)
        ]
        return sorted(fixed, key=lambda s: int(s.draft_len or 0))

    def fusion_rows(self) -> list[tuple[str, MethodSpec, MethodSpec]]:
        """Per fusion of the fusion table: (fusion, ours with its head at the default d, its draft alone)."""
        rows = []
        for kind, head in self.fusion_heads.items():
            found = self._present([("ssd", FINETUNED, head, self.draft_len), ("draft_only", FINETUNED, head, None)])
            if len(found) == 2:
                rows.append((kind, found[0], found[1]))
        return rows

    def to_dict(self) -> dict[str, Any]:
        return {
            "methods": [m.to_dict() for m in self.methods],
            "main_head": self.main_head,
            "variants": list(self.variants),
            "draft_layers": self.draft_layers,
            "draft_len": self.draft_len,
            "fusion_heads": dict(self.fusion_heads),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EvaluationPlan:
        return cls(
            tuple(MethodSpec.from_dict(m) for m in data["methods"]),
            data["main_head"],
            tuple(data["variants"]),
            data["draft_layers"],
            data["draft_len"],
            dict(data["fusion_heads"]),
        )


def main_head_name(heads: Iterable[str]) -> str:
    """The head "ours" stands for: the full-loss variant when trained, else the first head by name."""
    names = sorted(heads)
    if not names:
        raise ValueError("no imitation networks to evaluate")
    return "ce+cs+kd" if "ce+cs+kd" in names else names[0]


def evaluation_plan(
    params: Params,
    heads: Mapping[str, int],
    draft_verify_found: Mapping[str, Any],
    *,
    layerskip: bool = True,
    draft_len: int | None = None,
    language_draft: bool = False,
    hf_assisted: bool = False,
) -> EvaluationPlan:
    """Every method `evaluate` compares. `heads`: the trained imitation networks (name → draft layers n), `mixed`
    for the mixed schedule's; `draft_verify_found`: train_baselines' search result (skip_layers, threshold,
    max_draft_len); `layerskip`: whether LayerSkip's backbone exists; `draft_len`: the default d, resolved when
    decoding.draft_len is auto (`pipeline.evaluation.draft_choice`); `language_draft`: whether the separate
    language-only draft model exists (decoded by our engine, and with `hf_assisted` by Hugging Face's
    assistant_model)."""
    imitation = params.imitation
    d = params.decoding.draft_len if draft_len is None else draft_len
    if isinstance(d, str):
        raise ValueError("decoding.draft_len is auto: pass the resolved d (pipeline.evaluation.draft_choice)")
    main = main_head_name(h for h in heads if h != MIXED)
    n = heads[main]
    fusion_heads = imitation.fusion_table_heads()
    missing = {kind: head for kind, head in fusion_heads.items() if head not in heads}
    if missing:
        raise PipelineError(
            f"the fusion table's imitation networks {missing} are missing; run `dvc repro train_imitation`"
        )
    variants = tuple(v for v in imitation.variants if v in heads)
    methods = [
        autoregressive(),
        hf_generate(),
        draft_only(None, n, "draft without imitation"),
        draft_only(main, n, "draft with imitation"),
        draft_verify(
            draft_verify_found["skip_layers"],
            draft_verify_found["threshold"],
            draft_verify_found.get("max_draft_len", 8),
        ),
        ssd(None, n, d, f"SSD, no imitation (d={d})"),
        *[ssd(variant, n, d, f"ours ({variant})") for variant in variants],
        ssd(main, n, "growing", "ours, growing d"),
    ]
    main_label = f"ours ({main})"
    for kind, head in fusion_heads.items():
        if head != main:
            methods += [
                ssd(head, heads[head], d, f"{main_label}, {kind} fusion"),
                draft_only(head, heads[head], f"draft with imitation, {kind} fusion"),
            ]
    methods += [
        ssd(main, n, length, f"{main_label} d={length}") for length in params.evaluate.draft_lens if length != d
    ]
    if language_draft:
        methods.append(separate_draft(LANGUAGE_DRAFT, d, "language-only draft model"))
        if hf_assisted:
            methods.append(assisted(LANGUAGE_DRAFT, d, "language-only draft model (HF assistant_model)"))
    if layerskip:
        methods += [
            autoregressive(LAYERSKIP, "LayerSkip: its full model"),
            ssd(None, n, d, "LayerSkip", backbone=LAYERSKIP),
        ]
    if MIXED in heads:
        methods += [
            autoregressive(MIXED, "mixed schedule: its full model"),
            ssd(MIXED, heads[MIXED], d, "ours, mixed schedule", backbone=MIXED),
        ]
    return EvaluationPlan(tuple(dedupe(methods)), main, variants, n, d, fusion_heads)


def dedupe(methods: Iterable[MethodSpec]) -> list[MethodSpec]:
    """Methods with distinct keys, the first label kept."""
    seen: dict[str, MethodSpec] = {}
    for spec in methods:
        seen.setdefault(spec.key, spec)
    return list(seen.values())
