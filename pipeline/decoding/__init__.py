"""Self-speculative decoding (SSD) and the baselines it is measured against.

from pipeline.decoding import SelfSpeculativeDecoder
out = SelfSpeculativeDecoder(model, draft_layers=n, head=None, draft_len=5).generate(
    input_ids, max_new_tokens=64, pixel_values=px
)
out.sequences, out.stats
"""

from pipeline.decoding.acceptance import greedy_accept, speculative_accept
from pipeline.decoding.baselines import AutoregressiveDecoder, DraftAndVerifyDecoder, DraftOnlyDecoder
from pipeline.decoding.engine import SelfSpeculativeDecoder
from pipeline.decoding.head_protocol import StatefulHead
from pipeline.decoding.policies import (
    AcceptanceBackoff,
    ConfidenceStop,
    DraftPolicy,
    FixedDraftLength,
    GrowingDraftLength,
    HeuristicDraftLength,
    as_policy,
)
from pipeline.decoding.stats import DecodingStats, GenerationOutput

__all__ = [
    "AcceptanceBackoff",
    "AutoregressiveDecoder",
    "ConfidenceStop",
    "DecodingStats",
    "DraftAndVerifyDecoder",
    "DraftOnlyDecoder",
    "DraftPolicy",
    "FixedDraftLength",
    "GenerationOutput",
    "GrowingDraftLength",
    "HeuristicDraftLength",
    "SelfSpeculativeDecoder",
    "StatefulHead",
    "as_policy",
    "greedy_accept",
    "speculative_accept",
]
