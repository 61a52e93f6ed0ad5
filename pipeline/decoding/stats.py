"""What one `generate` call returns: the sequences and the draft/verify bookkeeping behind them."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class DecodingStats:
    """Counts over one generation.

    `drafted`/`accepted` count draft tokens proposed and accepted by verification (before any truncation at
    EOS or `max_new_tokens`); `verify_calls` counts deep-layer verification passes. Position `i` of
    `drafted_by_position`/`accepted_by_position` counts the `(i+1)`-th token of a draft round, so
    `accepted_by_position[i] / drafted_by_position[i]` is the acceptance rate at draft depth `i+1`. `contexts[j]`
    is the number of tokens generated before round `j` (`rounds[j]`): acceptance against context length is the
    paper's Fig. 5, the reason for a draft length that grows with the context.
    """

    drafted: int = 0
    accepted: int = 0
    verify_calls: int = 0
    new_tokens: int = 0
    drafted_by_position: list[int] = field(default_factory=list)
    accepted_by_position: list[int] = field(default_factory=list)
    rounds: list[tuple[int, int]] = field(default_factory=list)  # (drafted, accepted) per verification, in order
    contexts: list[int] = field(default_factory=list)  # tokens generated before each round of `rounds`

    @property
    def acceptance_rate(self) -> float:
        """Accepted / drafted (0 when nothing was drafted)."""
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def mean_accepted_length(self) -> float:
        """τ: draft tokens accepted per verification call (the verifier's own token is not counted)."""
        return self.accepted / self.verify_calls if self.verify_calls else 0.0

    @property
    def tokens_per_verification(self) -> float:
        """Tokens committed per verification call: τ + 1 when no round was cut short by EOS or the budget."""
        return self.new_tokens / self.verify_calls if self.verify_calls else 0.0

    def record_round(self, drafted: int, accepted: int, context: int) -> None:
        """One verification of `drafted` draft tokens of which the first `accepted` matched, after `context` tokens
        had been generated."""
        self.drafted += drafted
        self.accepted += accepted
        self.verify_calls += 1
        self.rounds.append((drafted, accepted))
        self.contexts.append(context)
        if len(self.drafted_by_position) < drafted:
            grow = drafted - len(self.drafted_by_position)
            self.drafted_by_position += [0] * grow
            self.accepted_by_position += [0] * grow
        for i in range(drafted):
            self.drafted_by_position[i] += 1
        for i in range(accepted):
            self.accepted_by_position[i] += 1

    def merge(self, other: DecodingStats) -> DecodingStats:
        """Sum of two runs' counts (e.g. over a benchmark's prompts)."""
        merged = DecodingStats(
            self.drafted + other.drafted,
            self.accepted + other.accepted,
            self.verify_calls + other.verify_calls,
            self.new_tokens + other.new_tokens,
        )
        depth = max(len(self.drafted_by_position), len(other.drafted_by_position))
        pad = lambda xs: xs + [0] * (depth - len(xs))  # noqa: E731
        merged.drafted_by_position = [
            a + b for a, b in zip(pad(self.drafted_by_position), pad(other.drafted_by_position), strict=True)
        ]
        merged.accepted_by_position = [
            a + b for a, b in zip(pad(self.accepted_by_position), pad(other.accepted_by_position), strict=True)
        ]
        merged.rounds = self.rounds + other.rounds
        merged.contexts = self.contexts + other.contexts
        return merged

    def by_context(self) -> list[tuple[int, int, int]]:
        """(context length, drafted, accepted) summed over the rounds that started after that many generated tokens,
        for every context length seen, in order."""
        sums: dict[int, list[int]] = {}
        for context, (drafted, accepted) in zip(self.contexts, self.rounds, strict=True):
            total = sums.setdefault(context, [0, 0])
            total[0] += drafted
            total[1] += accepted
        return [(context, drafted, accepted) for context, (drafted, accepted) in sorted(sums.items())]

    def token_sources(self) -> list[str]:
        """Who produced each new token of one generation: "draft" (a draft token the full model accepted) or
        "verify" (the full model's own token: the first one, after prefill, and one per verification —
        the correction of a rejected draft token, or the bonus after a fully accepted round)."""
        sources = ["verify"]
        for _, accepted in self.rounds:
            sources += ["draft"] * accepted + ["verify"]
        return sources[: self.new_tokens]

    def to_dict(self) -> dict:
        return {
            "drafted": self.drafted,
            "accepted": self.accepted,
            "verify_calls": self.verify_calls,
            "new_tokens": self.new_tokens,
            "acceptance_rate": self.acceptance_rate,
            "mean_accepted_length": self.mean_accepted_length,
            "tokens_per_verification": self.tokens_per_verification,
            "drafted_by_position": list(self.drafted_by_position),
            "accepted_by_position": list(self.accepted_by_position),
        }

    @classmethod
    def total(cls, rows: list[DecodingStats]) -> DecodingStats:
        """The sum of several rows' (or runs') counts."""
        total = cls()
        for row in rows:
            total = total.merge(row)
        return total


@dataclass
class GenerationOutput:
    """`sequences`: [B, T + new] in the layout of `model.generate(...).sequences`; `stats`: totals over the batch,
    `row_stats`: each row's own."""

    sequences: torch.Tensor
    stats: DecodingStats
    row_stats: list[DecodingStats] = field(default_factory=list)

    @classmethod
    def of_rows(cls, sequences: torch.Tensor, rows: list[DecodingStats]) -> GenerationOutput:
        return cls(sequences, DecodingStats.total(rows), rows)
