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


def test_trials_that_train_their_head_start_before_those_that_reuse_one(tmp_path):
    from ray.tune.search.variant_generator import generate_variants

    from pipeline.search.space import load_search_space
    from pipeline.search.sweep import heads_to_train

    params = parse_params({})
    path = tmp_path / "sweep.yaml"
    path.write_text("space:\n  draft_layers: {grid: [1, 2]}\n  loss: {grid: [ce, ce+cs+kd]}\n")
    space = load_search_space(path)
    # train_imitation trained both losses at n = 1 (select_layer's n): only n = 2 trials train a head
    reusable = {head_key(1, loss_weights(loss, params)): f"/heads/{loss}" for loss in ("ce", "ce+cs+kd")}
    assert heads_to_train(space, params, reusable) == [2]
    ordered = space.with_values_first("draft_layers", heads_to_train(space, params, reusable))
    trials = [(c["draft_layers"], c["loss"]) for _, c in generate_variants(ordered.to_tune())]
    # two at a time (2 cores): a training trial starts first and the last one to start only decodes, so no training
    # runs alone at the end while the other core idles
    assert [n for n, _ in trials[:1]] == [2] and trials[-1][0] == 1
    assert sorted(trials) == [(1, "ce"), (1, "ce+cs+kd"), (2, "ce"), (2, "ce+cs+kd")]
    # without the reordering the grid's order puts an n = 2 trial last: what this guards against
    assert [c["draft_layers"] for _, c in generate_variants(space.to_tune())][-1] == 2
    # nothing reusable: every n trains, the file's order is kept
    assert heads_to_train(space, params, {}) == [1, 2]
    assert space.with_values_first("draft_layers", [1, 2]).values("draft_layers") == [1, 2]
