"""What the NAS prices before its search: one draft per architecture that costs differently at inference."""

from __future__ import annotations

from pipeline.config import ImitationArchitecture
from pipeline.search.nas import latency_key, space_architectures
from pipeline.search.space import SearchSpace


def test_the_space_is_priced_once_per_architecture_that_runs_differently():
    space = SearchSpace(
        "nas.yaml",
        {
            "num_linear": {"choice": [1, 2]},
            "attention": {"grid": [False, True]},
            "dropout": {"choice": [0.0, 0.1]},  # no work at inference: not a price of its own
            "activation": "relu",
        },
        [],
    )
    base = ImitationArchitecture(num_heads=2)
    found = space_architectures(space, base)
    assert found is not None
    assert sorted((a.num_linear, a.attention) for a in found) == [(1, False), (1, True), (2, False), (2, True)]
    assert {a.activation for a in found} == {"relu"} and {a.num_heads for a in found} == {2}
    assert len({latency_key(a) for a in found}) == 4
    # architectures that differ only in dropout share their price
    assert latency_key(base.model_copy(update={"dropout": 0.3})) == latency_key(base)


def test_a_continuous_field_that_changes_the_work_leaves_pricing_to_the_trials():
    base = ImitationArchitecture()
    assert space_architectures(SearchSpace("s", {"num_heads": {"randint": [1, 8]}}, []), base) is None
    # a continuous dropout changes no work: the space is still priced up front
    priced = space_architectures(SearchSpace("s", {"dropout": {"uniform": [0.0, 0.5]}}, []), base)
    assert priced is not None and [latency_key(a) for a in priced] == [latency_key(base)]
