"""The d `evaluate` uses when decoding.draft_len is auto: the sweep's fastest fixed d at the evaluated n."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.config import parse_params
from pipeline.errors import ConfigError
from pipeline.evaluation.draft_choice import resolve_draft_len
from pipeline.evaluation.methods import evaluation_plan
from pipeline.search.sweep import fastest_draft_len

FOUND = {"skip_layers": [2], "threshold": 0.6, "max_draft_len": 8}


def _row(n: int, d: int | str, speedup: float, identical: float = 1.0) -> dict:
    return {"config.draft_layers": n, "config.draft_len": d, "speedup": speedup, "identical_share": identical}


def test_the_sweep_picks_per_n_the_fixed_d_fastest_on_average_over_its_losses():
    rows = [
        _row(1, 2, 1.20),
        _row(1, 2, 1.30),  # d = 2: mean 1.25
        _row(1, 5, 1.50),
        _row(1, 5, 1.10),  # d = 5: mean 1.30, though its slower loss is slower than any d = 2 trial
        _row(1, "growing", 2.00),  # not a fixed d
        _row(1, 3, 9.00, identical=0.9),  # lossy: never chosen
        _row(2, 3, 1.10),
        _row(2, 2, 1.05),
    ]
    assert fastest_draft_len(rows) == {"1": 5, "2": 3}


def test_auto_reads_the_sweeps_choice_at_the_evaluated_n(tmp_path: Path):
    sweep = tmp_path / "sweep.json"
    assert resolve_draft_len(4, 1, sweep) == 4  # a given d needs no sweep
    with pytest.raises(ConfigError, match=r"sweep.json is missing: run `dvc repro sweep`"):
        resolve_draft_len("auto", 1, sweep)
    sweep.write_text(json.dumps({"draft_len_by_layers": {"1": 5, "2": 3}}))
    assert resolve_draft_len("auto", 2, sweep) == 3
    with pytest.raises(ConfigError, match=r"no fixed d at n = 4 \(its n with a fixed d: \[1, 2\]\)"):
        resolve_draft_len("auto", 4, sweep)


def test_a_plan_needs_a_resolved_d():
    params = parse_params({"decoding": {"draft_len": "auto"}, "imitation": {"fusion_comparison": []}})
    with pytest.raises(ValueError, match=r"decoding\.draft_len is auto"):
        evaluation_plan(params, {"ce+cs+kd": 1}, FOUND)
    plan = evaluation_plan(params, {"ce+cs+kd": 1}, FOUND, draft_len=5)
    assert plan.draft_len == 5 and plan.main.draft_len == 5
    with pytest.raises(ConfigError, match=r"(?s)decoding.draft_len.*greater than or equal to 1.*should be 'auto'"):
        parse_params({"decoding": {"draft_len": 0}})


def test_a_sweep_trial_becomes_one_row_per_draft_length_sharing_its_reference_and_draft():
    from pipeline.search.sweep import setting_rows

    trial = {
        "trial_id": "t1",
        "config.draft_layers": 1,
        "config.loss": "ce",
        "speedup": 1.9,  # the trial's best, for Tune: replaced by each d's own
        "tokens_per_second_full": 100.0,
        "cider_draft": 0.5,
        "speedup.d2": 1.5,
        "identical_share.d2": 1.0,
        "speedup.d5": 1.9,
        "identical_share.d5": 1.0,
        "speedup.dgrowing": 1.7,
        "identical_share.dgrowing": 0.5,
        "error": "",
    }
    rows = setting_rows([trial], [2, 5, "growing"])
    assert [(r["config.draft_len"], r["speedup"], r["identical_share"]) for r in rows] == [
        (2, 1.5, 1.0),
        (5, 1.9, 1.0),
        ("growing", 1.7, 0.5),
    ]
    assert all(r["tokens_per_second_full"] == 100.0 and r["cider_draft"] == 0.5 for r in rows)
    assert all(not any(key.endswith((".d2", ".d5", ".dgrowing")) for key in r) for r in rows)
    assert fastest_draft_len(rows) == {"1": 5}
