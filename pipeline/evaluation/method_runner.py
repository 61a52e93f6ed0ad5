"""From a `MethodSpec` to something that decodes: the decoder it names, on the backbone it names, with the draft
head it names, wrapped as a `Method` (prompt → new tokens, stats) that `evaluate_methods` can time."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from pipeline.config import BackoffConfig, DecodingConfig, GrowingScheduleConfig
from pipeline.decoding import (
    AcceptanceBackoff,
    AutoregressiveDecoder,
    ConfidenceStop,
    DraftAndVerifyDecoder,
    DraftOnlyDecoder,
    DraftPolicy,
    GrowingDraftLength,
    SelfSpeculativeDecoder,
)
from pipeline.decoding.engine import Decoder
from pipeline.decoding.hf_reference import hf_assisted, hf_early_exit, hf_greedy
from pipeline.decoding.separate_draft import SeparateDraftDecoder
from pipeline.decoding.stats import DecodingStats
from pipeline.evaluation.batching import collate, new_token_rows
from pipeline.evaluation.methods import DraftLength, MethodSpec
from pipeline.evaluation.prompts import Prompt
from pipeline.evaluation.speed import BatchMethod, Method
from pipeline.models.adapters import adapter_for


@dataclass
class DecodingResources:
    """What specs refer to by name: the backbones' models and the imitation networks as draft heads."""

    models: Mapping[str, nn.Module]  # backbone name (finetuned, layerskip, mixed) → model
    heads: Mapping[str, nn.Module] = field(default_factory=dict)  # imitation network name → draft head (as_draft_head)
    eos_token_id: int | None = None
    growing: GrowingScheduleConfig = field(default_factory=GrowingScheduleConfig)  # what draft_len "growing" means
    pad_token_id: int | None = None  # fills a batch's finished rows (default: the EOS)
    backoff: BackoffConfig | None = None  # self-speculative methods stop drafting when it does not pay off
    draft_models: Mapping[str, nn.Module] = field(default_factory=dict)  # separate draft models by name

    @classmethod
    def of(
        cls,
        models: Mapping[str, nn.Module],
        heads: Mapping[str, nn.Module],
        tokenizer: Any,
        decoding: DecodingConfig,
        draft_models: Mapping[str, nn.Module] | None = None,
    ) -> DecodingResources:
        """Resources decoding as params' `decoding` section says, stopping at and padding with `tokenizer`'s tokens."""
        return cls(
            models,
            heads,
            tokenizer.eos_token_id,
            decoding.growing,
            pad_token_id=tokenizer.pad_token_id,
            backoff=decoding.backoff,
            draft_models=draft_models or {},
        )

    def model(self, spec: MethodSpec) -> nn.Module:
        if spec.backbone not in self.models:
            raise KeyError(f"{spec.key}: backbone {spec.backbone!r} is not loaded (have {sorted(self.models)})")
        return self.models[spec.backbone]

    def draft_model(self, spec: MethodSpec) -> nn.Module:
        if spec.draft_model is None or spec.draft_model not in self.draft_models:
            raise KeyError(
                f"{spec.key}: draft model {spec.draft_model!r} is not loaded (have {sorted(self.draft_models)})"
            )
        return self.draft_models[spec.draft_model]

    def head(self, spec: MethodSpec) -> nn.Module | None:
        if spec.head is None:
            return None
        if spec.head not in self.heads:
            raise KeyError(f"{spec.key}: imitation network {spec.head!r} is not loaded (have {sorted(self.heads)})")
        return self.heads[spec.head]


def draft_policy(
    draft_len: DraftLength, growing: GrowingScheduleConfig, backoff: BackoffConfig | None = None
) -> int | DraftPolicy:
    """A fixed d, or the growing schedule (our stand-in for the paper's context-dependent d, eq. 5); wrapped in the
    acceptance backoff when it is enabled."""
    policy: int | DraftPolicy
    if draft_len == "growing":
        policy = GrowingDraftLength(**growing.model_dump())
    elif isinstance(draft_len, int) and not isinstance(draft_len, bool) and draft_len >= 1:
        policy = draft_len
    else:
        raise ValueError(f"draft_len must be a positive integer or 'growing', got {draft_len!r}")
    if backoff is None or not backoff.enabled:
        return policy
    settings = backoff.model_dump(exclude={"enabled"})
    return AcceptanceBackoff(policy, settings.pop("cost_ratio"), **settings)


def build_decoder(spec: MethodSpec, resources: DecodingResources) -> Decoder:
    """Our decoder for `spec` (every kind but Hugging Face's own generate)."""
    model = resources.model(spec)
    if spec.kind == "autoregressive":
        return AutoregressiveDecoder(model)
    if spec.kind == "draft_only":
        return DraftOnlyDecoder(model, spec.draft_layers, resources.head(spec))
    if spec.kind == "ssd":
        if spec.draft_layers is None or spec.draft_len is None:
            raise ValueError(f"{spec.key}: self-speculative decoding needs draft_layers and draft_len")
        return SelfSpeculativeDecoder(
            model,
            spec.draft_layers,
            resources.head(spec),
            draft_policy(spec.draft_len, resources.growing, resources.backoff),
        )
    if spec.kind == "separate_draft":
        if spec.draft_len is None:
            raise ValueError(f"{spec.key}: speculative decoding with a draft model needs draft_len")
        policy = draft_policy(spec.draft_len, resources.growing, resources.backoff)
        return SeparateDraftDecoder(model, resources.draft_model(spec), policy)
    if spec.kind == "draft_verify":
        if spec.threshold is None or spec.max_draft_len is None:
            raise ValueError(f"{spec.key}: Draft & Verify needs a threshold and max_draft_len")
        return DraftAndVerifyDecoder(model, spec.skip_layers, ConfidenceStop(spec.threshold, spec.max_draft_len))
    raise ValueError(f"{spec.key}: {spec.kind} is Hugging Face's generate, not one of our decoders")


def batch_runnable(spec: MethodSpec, resources: DecodingResources) -> BatchMethod:
    """`spec` as a `BatchMethod`: decodes prompts of one task (one `max_new_tokens`) as one left-padded batch into
    each row's new tokens (up to its EOS) and its draft/verify counts."""
    eos = resources.eos_token_id
    stop = frozenset() if eos is None else frozenset([eos])
    model = resources.model(spec)
    adapter = adapter_for(model)
    pad = resources.pad_token_id if resources.pad_token_id is not None else (eos if eos is not None else 0)

    def budget(prompts: Sequence[Prompt]) -> int:
        budgets = {p["max_new_tokens"] for p in prompts}
        if len(budgets) != 1:
            raise ValueError(f"{spec.key}: a batch shares one token budget, got {sorted(budgets)}")
        return budgets.pop()

    if spec.kind == "hf_assisted":
        if not isinstance(spec.draft_len, int):
            raise ValueError(f"{spec.key}: Hugging Face's assisted generation needs a fixed draft_len")
        assistant, rounds = resources.draft_model(spec), spec.draft_len

        def assisted(prompts: Sequence[Prompt]) -> list[tuple[list[int], DecodingStats | None]]:
            rows: list[tuple[list[int], DecodingStats | None]] = []
            for prompt in prompts:  # HF's assisted generation refuses batches
                batch, new = collate([prompt], pad), budget([prompt])
                ids = batch["input_ids"]
                sequences = hf_assisted(
                    model,
                    assistant,
                    ids,
                    new,
                    eos,
                    draft_len=rounds,
                    pixel_values=batch["pixel_values"],
                    pad_token_id=pad,
                )
                rows += [(row, None) for row in new_token_rows(adapter.new_tokens(sequences, ids), stop)]
            return rows

        return assisted
    if spec.kind in ("hf_generate", "hf_early_exit"):
        early_exit: dict[str, int] | None = None
        if spec.kind == "hf_early_exit":
            if spec.draft_layers is None or not isinstance(spec.draft_len, int):
                raise ValueError(f"{spec.key}: Hugging Face's early exit needs draft_layers and a fixed draft_len")
            early_exit = {"draft_layers": spec.draft_layers, "draft_len": spec.draft_len}

        def generate(prompts: Sequence[Prompt]) -> list[tuple[list[int], DecodingStats | None]]:
            if early_exit is not None and len(prompts) > 1:  # HF's assisted generation refuses batches
                return [row for prompt in prompts for row in generate([prompt])]
            batch, new = collate(prompts, pad), budget(prompts)
            ids = batch["input_ids"]
            extra: dict[str, Any] = {"attention_mask": batch["attention_mask"], "pad_token_id": pad}
            if early_exit is None:
                sequences = hf_greedy(model, ids, new, eos, pixel_values=batch["pixel_values"], **extra)
            else:
                pixels = batch["pixel_values"]
                sequences = hf_early_exit(model, ids, new, eos, pixel_values=pixels, **extra, **early_exit)
            return [(row, None) for row in new_token_rows(adapter.new_tokens(sequences, ids), stop)]

        return generate
    decoder = build_decoder(spec, resources)

    def decode(prompts: Sequence[Prompt]) -> list[tuple[list[int], DecodingStats | None]]:
        batch = collate(prompts, pad)
        out = decoder.generate(
            batch["input_ids"],
            budget(prompts),
            eos,
            attention_mask=batch["attention_mask"],
            pixel_values=batch["pixel_values"],
            pad_token_id=pad,
        )
        rows = new_token_rows(adapter.new_tokens(out.sequences, batch["input_ids"]), stop)
        return list(zip(rows, out.row_stats, strict=True))

    return decode


def runnable(spec: MethodSpec, resources: DecodingResources) -> Method:
    """`spec` as a `Method`: decodes one prompt (input_ids, pixel_values, max_new_tokens) into its new tokens."""
    batched = batch_runnable(spec, resources)

    def one(prompt: Prompt) -> tuple[torch.Tensor, DecodingStats | None]:
        tokens, stats = batched([prompt])[0]
        return torch.tensor(tokens, dtype=torch.long), stats

    return one


def runnables(specs: Iterable[MethodSpec], resources: DecodingResources) -> dict[str, Method]:
    """Every spec as a `Method`, keyed by `spec.key`."""
    return {spec.key: runnable(spec, resources) for spec in specs}


def batch_runnables(specs: Iterable[MethodSpec], resources: DecodingResources) -> dict[str, BatchMethod]:
    """Every spec as a `BatchMethod`, keyed by `spec.key`."""
    return {spec.key: batch_runnable(spec, resources) for spec in specs}
