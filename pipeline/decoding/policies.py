"""Draft-length policies: how many tokens to draft before each verification.

Every policy implements one small interface, so the decode loop never knows which one it runs:

- `propose(generated)` — the most tokens to draft this round, given how many tokens were generated so far;
- `keep_drafting(position, confidence)` — after drafting the `position`-th token of a round whose top-1
  draft probability is `confidence`, whether to draft another (only asked when `needs_confidence`: reading a
  probability back from the device costs a synchronisation the loop skips otherwise);
- `update(drafted, accepted)` — the verification outcome of the round;
- `reset()` — forget per-generation state before a new `generate` call.

Policies are cheap plain objects; a decoder resets its policy at the start of every `generate`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod


class DraftPolicy(ABC):
    needs_confidence: bool = False

    # `reset` and `update` are optional hooks: no-ops for policies without state (B027 is intended)
    def reset(self) -> None:  # noqa: B027
        """Forget per-generation state (called at the start of every `generate`)."""

    @abstractmethod
    def propose(self, generated: int) -> int:
        """Upper bound on the number of tokens to draft this round (≥ 0; 0: a plain decoding step)."""

    def keep_drafting(self, position: int, confidence: float) -> bool:
        """Whether to draft past the `position`-th token of this round (1-based), given its top-1 probability."""
        return True

    def update(self, drafted: int, accepted: int) -> None:  # noqa: B027
        """The round drafted `drafted` tokens, of which verification accepted the first `accepted`."""


def _check_length(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer ≥ 1, got {value!r}")
    return value


class FixedDraftLength(DraftPolicy):
    """Always draft `d` tokens (LayerSkip, and the paper's fixed-d runs)."""

    def __init__(self, d: int) -> None:
        self.d = _check_length("draft_len", d)

    def propose(self, generated: int) -> int:
        return self.d

    def __repr__(self) -> str:
        return f"FixedDraftLength({self.d})"


class GrowingDraftLength(DraftPolicy):
    """A draft length that grows with the number of tokens generated so far: d = clip(d_min + ⌊t / step⌋, d_min, d_max).

    FastVLM (arXiv 2510.22641, eq. 5) lets the number of draft tokens grow with the context generated so
    far, bounded by d_min..d_max: later tokens of a caption are easier to predict from what precedes them.
    The exact form of eq. 5 could not be retrieved here, so this is a documented stand-in with the same
    properties (monotone in t, starts at d_min, saturates at d_max): one more draft token every `step`
    generated tokens.
    """

    def __init__(self, d_min: int = 2, d_max: int = 8, step: int = 8) -> None:
        self.d_min = _check_length("d_min", d_min)
        self.d_max = _check_length("d_max", d_max)
        self.step = _check_length("step", step)
        if d_max < d_min:
            raise ValueError(f"d_max ({d_max}) must be ≥ d_min ({d_min})")

    def propose(self, generated: int) -> int:
        return max(self.d_min, min(self.d_max, self.d_min + generated // self.step))

    def __repr__(self) -> str:
        return f"GrowingDraftLength(d_min={self.d_min}, d_max={self.d_max}, step={self.step})"


class ConfidenceStop(DraftPolicy):
    """Stop drafting after a token whose top-1 draft probability is below `threshold` (Draft & Verify).

    The low-confidence token itself is kept (it may still be right); `base` bounds the round's length.
    """

    needs_confidence = True

    def __init__(self, threshold: float = 0.6, base: int | DraftPolicy = 8) -> None:
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be a probability in [0, 1], got {threshold!r}")
        self.threshold = threshold
        self.base = as_policy(base)

    def reset(self) -> None:
        self.base.reset()

    def propose(self, generated: int) -> int:
        return self.base.propose(generated)

    def keep_drafting(self, position: int, confidence: float) -> bool:
        return confidence >= self.threshold and (
            not self.base.needs_confidence or self.base.keep_drafting(position, confidence)
        )

    def update(self, drafted: int, accepted: int) -> None:
        self.base.update(drafted, accepted)

    def __repr__(self) -> str:
        return f"ConfidenceStop(threshold={self.threshold}, base={self.base!r})"


class HeuristicDraftLength(DraftPolicy):
    """Hugging Face's "heuristic" schedule: +2 after a fully accepted round, −1 otherwise, never below 1."""

    def __init__(self, initial: int = 5) -> None:
        self.initial = _check_length("initial", initial)
        self.current = initial

    def reset(self) -> None:
        self.current = self.initial

    def propose(self, generated: int) -> int:
        return self.current

    def update(self, drafted: int, accepted: int) -> None:
        self.current = self.current + 2 if accepted == drafted else max(1, self.current - 1)

    def __repr__(self) -> str:
        return f"HeuristicDraftLength(initial={self.initial})"


def expected_gain(acceptance: float, cost_ratio: float, draft_len: float, round_overhead: float = 0.0) -> float:
    """Leviathan et al. (2023): tokens per unit of full-model cost when drafting `draft_len` tokens at per-token
    acceptance α and draft cost c: (1 − α^(d+1)) / ((1 − α)(d·c + 1)); 1 for d = 0 (plain decoding).

    `round_overhead` γ prices what Leviathan et al. take as free: a drafting round's verification is one pass over
    d + 1 positions, which costs a one-token step plus γ (on a memory-bound accelerator γ ≈ 0; on this CPU a pass of
    2–6 positions costs 1.16–1.33 one-token passes, whatever the width), so such a round costs 1 + γ + d·c."""
    tokens = draft_len + 1 if acceptance >= 1.0 else (1 - acceptance ** (draft_len + 1)) / (1 - acceptance)
    return tokens / (draft_len * cost_ratio + 1 + (round_overhead if draft_len > 0 else 0.0))


class AcceptanceBackoff(DraftPolicy):
    """Draft only as many tokens as pay off at the acceptance seen so far — down to none — and come back when it
    recovers.

    Wraps any policy, which decides as long as its drafts pay off. The per-token acceptance α is estimated from the
    rounds so far (accepted drafts over the drafts actually tested: a round stops at its first rejection), older
    rounds fading (`memory` per round). While drafting the base's d is expected to beat plain decoding
    (`expected_gain` ≥ 1, a draft token costing `cost_ratio` of a full one, a drafting round's verification
    `round_overhead` more than a plain step) the base's d is drafted unchanged;
    otherwise the d ≤ base's that maximises the expected gain, down to 0: a plain decoding step. Every
    `probe_every` rounds of those one token is drafted to see whether acceptance has come back; each rejected probe
    doubles the period (up to `max_probe_every`), an accepted one resets it, so a draft that stays useless costs
    ever fewer probes.

    With `across_prompts` the acceptance estimate carries over from one generation to the next instead of restarting
    at the prior, as a server's policy would: after a few short answers or blank images the next such prompt starts at
    plain decoding, and a prompt where the draft works wins drafting back with its first accepted probe (the probe
    period restarts with every prompt).
    """

    def __init__(
        self,
        base: int | DraftPolicy,
        cost_ratio: float,
        *,
        round_overhead: float = 0.0,
        memory: float = 0.7,
        probe_every: int = 4,
        max_probe_every: int = 32,
        prior: float = 0.6,
        across_prompts: bool = False,
    ) -> None:
        if not 0.0 <= cost_ratio < 1.0:
            raise ValueError(f"cost_ratio must be in [0, 1), got {cost_ratio!r}")
        if round_overhead < 0.0:
            raise ValueError(f"round_overhead must be >= 0, got {round_overhead!r}")
        if not 0.0 <= memory < 1.0 or not 0.0 < prior < 1.0:
            raise ValueError(f"memory must be in [0, 1) and prior in (0, 1), got {memory!r}, {prior!r}")
        self.base = as_policy(base)
        self.cost_ratio = cost_ratio
        self.round_overhead = round_overhead
        self.memory = memory
        self.probe_every = _check_length("probe_every", probe_every)
        self.max_probe_every = max(self.probe_every, _check_length("max_probe_every", max_probe_every))
        self.prior = prior
        self.across_prompts = across_prompts
        self.needs_confidence = self.base.needs_confidence
        self._start_estimate()
        self.reset()

    def _start_estimate(self) -> None:
        # the prior counts as a few tested drafts, so that one early rejection does not switch drafting off
        self.accepted, self.tested = 2 * self.prior, 2.0

    def reset(self) -> None:
        self.base.reset()
        self.probing = False
        # the probe schedule restarts with every prompt: a prompt where the draft works is probed within
        # `probe_every` rounds even after a run of useless ones
        self.idle = 0
        self.wait = self.probe_every  # plain steps before the next probe
        if not self.across_prompts:  # otherwise the acceptance estimate of the generations so far carries on
            self._start_estimate()

    @property
    def acceptance(self) -> float:
        return self.accepted / self.tested

    def _gain(self, draft_len: int) -> float:
        return expected_gain(self.acceptance, self.cost_ratio, draft_len, self.round_overhead)

    def propose(self, generated: int) -> int:
        most = self.base.propose(generated)
        if self._gain(most) >= 1.0:
            self.idle = 0
            return most
        best = max(range(most + 1), key=self._gain)
        if best > 0:
            self.idle = 0
            return best
        self.idle += 1
        if self.idle >= self.wait:
            self.idle = 0
            self.probing = True
            return 1
        return 0

    def keep_drafting(self, position: int, confidence: float) -> bool:
        return self.base.keep_drafting(position, confidence)

    def update(self, drafted: int, accepted: int) -> None:
        self.base.update(drafted, accepted)
        if self.probing and drafted:
            self.probing = False
            self.wait = self.probe_every if accepted else min(2 * self.wait, self.max_probe_every)
        if drafted:
            self.accepted = self.memory * self.accepted + accepted
            self.tested = self.memory * self.tested + min(drafted, accepted + 1)

    def __repr__(self) -> str:
        return f"AcceptanceBackoff({self.base!r}, cost_ratio={self.cost_ratio}, round_overhead={self.round_overhead})"


def as_policy(draft_len: int | DraftPolicy) -> DraftPolicy:
    """An int means a fixed draft length; a policy object is used as is."""
    if isinstance(draft_len, DraftPolicy):
        return draft_len
    if isinstance(draft_len, int) and not isinstance(draft_len, bool):
        return FixedDraftLength(draft_len)
    raise TypeError(f"draft_len must be an int ≥ 1 or a DraftPolicy, got {type(draft_len).__name__}")
