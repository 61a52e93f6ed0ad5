"""The report's tables and its checks of the paper's claims, on hand-made metrics."""

from __future__ import annotations

from pipeline.report import markdown_table
from stages.report import claims, table1, table_n


def _method(speedup, cider, identical=1.0, acceptance=None):
    row = {"speedup": speedup, "tokens_per_second": 100.0 * speedup, "identical_share": identical,
           "speedup_by_task": {"caption": speedup}, "tasks": {"caption": {"bleu4": 0.3, "rouge_l": 0.5, "cider": cider, "meteor": 0.2}}}
    if acceptance is not None:
        row.update(acceptance_rate=acceptance, mean_accepted_length=1.5)
    return row


METHODS = {
    "full model": _method(1.0, 0.5),
    "draft without imitation": _method(4.0, 0.1, identical=0.0),
    "draft with imitation": _method(3.5, 0.3, identical=0.2),
    "Draft & Verify": _method(1.1, 0.5, acceptance=0.8),
    "LayerSkip": _method(1.3, 0.6, acceptance=0.3),
    "ours (ce+cs+kd)": _method(1.4, 0.5, acceptance=0.4),
    "ours, growing d": _method(1.2, 0.5, identical=0.95, acceptance=0.4),
}


def test_claims_are_checked_not_assumed():
    checked = {claim: (held, evidence) for claim, held, evidence in claims(METHODS)}
    assert checked["draft with imitation ≫ draft without (caption CIDEr of the draft alone)"] == (True, "0.300 vs 0.100")
    assert checked["ours faster than LayerSkip"][0] is True and checked["ours faster than Draft & Verify"][0] is True
    held, evidence = checked["lossless methods identical to their full model's greedy output"]
    assert held is False and "ours, growing d 95 %" in evidence
    slower = {**METHODS, "LayerSkip": _method(2.0, 0.6, acceptance=0.3)}
    assert dict((c, h) for c, h, _ in claims(slower))["ours faster than LayerSkip"] is False


def test_tables():
    table = table1(METHODS)
    assert table.splitlines()[0].startswith("| method | BLEU-4 | METEOR") and "| ours (ce+cs+kd) | 0.300 | 0.200 |" in table
    assert "1.40×" in table and "n/a" in table  # no SPICE number when it did not run
    assert markdown_table(["a", "b"], [[None, "x|y"]]).splitlines()[2] == "| – | x\\|y |"
    rows = [{"config.draft_layers": "1", "loss_label": "ce", "config.draft_len": d, "speedup": s, "acceptance_rate": "0.5",
             "mean_accepted_length": "1", "cider_draft": "0.2", "cider_ssd": "0.5", "cider_full": "0.5", "draft_cost_ratio": "0.1"}
            for d, s in (("2", "1.2"), ("4", "1.5"))]
    assert "| 1 | ce | 4 | 1.50× |" in table_n(rows)
