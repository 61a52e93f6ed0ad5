"""Which trained imitation networks the sweep may reuse for an (n, λ) pair instead of training its own."""

from __future__ import annotations

from pipeline.config import ImitationArchitecture, parse_params
from pipeline.models.imitation import ImitationNetwork, save_imitation
from pipeline.search.sweep_heads import head_key, loss_weights, reusable_heads


def test_the_sweep_never_reuses_a_head_trained_with_another_fusion_or_schedule(tmp_path):
    params = parse_params({"imitation": {"fusion": "average"}})
    arch = ImitationArchitecture().model_dump()
    network = ImitationNetwork(8)
    # same n and loss as the main ce+cs+kd head, and sorted after it: a name-order overwrite would pick it
    save_imitation(
        network, tmp_path / "ce+cs+kd", {"draft_layers": 1, "variant": "ce+cs+kd", "fusion": "average", "mixed": False}
    )
    save_imitation(
        network,
        tmp_path / "fusion-concat",
        {"draft_layers": 1, "variant": "ce+cs+kd", "fusion": "concat", "mixed": False},
    )
    save_imitation(
        network, tmp_path / "mixed", {"draft_layers": 1, "variant": "ce+cs+kd", "fusion": "average", "mixed": True}
    )
    found = reusable_heads(tmp_path, params, arch)
    assert found == {head_key(1, loss_weights("ce+cs+kd", params)): str((tmp_path / "ce+cs+kd").resolve())}


def test_a_head_of_another_architecture_or_budget_is_not_reused(tmp_path):
    params = parse_params({})
    save_imitation(
        ImitationNetwork(8, ImitationArchitecture(num_linear=1)),
        tmp_path / "ce",
        {"draft_layers": 1, "variant": "ce", "fusion": "average", "mixed": False},
    )
    assert reusable_heads(tmp_path, params, ImitationArchitecture().model_dump()) == {}
    assert list(reusable_heads(tmp_path, params, ImitationArchitecture(num_linear=1).model_dump())) == [
        "n1-ce1-cs0-kd0"
    ]
    other_budget = parse_params({"sweep": {"train_steps": 7}})
    assert reusable_heads(tmp_path, other_budget, ImitationArchitecture(num_linear=1).model_dump()) == {}
