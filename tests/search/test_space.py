"""Search-space files: the distributions they declare, and errors that name the file and the key."""

from __future__ import annotations

import pytest

from pipeline.errors import ConfigError
from pipeline.evaluation.pareto import pareto_front
from pipeline.search.space import load_search_space
from tests.conftest import ROOT


def _write(tmp_path, text: str):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return path


def test_repository_spaces_load_with_their_trainables_keys():
    from pipeline.search.nas import ARCHITECTURE_KEYS
    from pipeline.search.sweep import SPACE_KEYS

    nas = load_search_space(ROOT / "experiments/search_spaces/nas.yaml", ARCHITECTURE_KEYS)
    assert nas.values("num_linear") == [1, 2] and nas.values("attention") == [False, True]
    assert nas.evaluate_first == [{"num_linear": 2, "attention": False, "activation": "gelu", "dropout": 0.0}]
    sweep = load_search_space(ROOT / "experiments/search_spaces/sweep.yaml", SPACE_KEYS)
    assert "growing" in sweep.values("draft_len") and sweep.grid_size() >= 4


def test_distributions_become_tune_objects(tmp_path):
    from ray.tune.search.sample import Categorical, Float, Integer

    space = load_search_space(
        _write(
            tmp_path,
            (
                "space:\n  a: {choice: [1, 2]}\n  b: {grid: [x, y]}\n  c: {loguniform: [0.001, 0.1]}\n"
                "  d: {randint: [1, 4]}\n  e: 7\n  f: {uniform: [0, 1]}\n"
            ),
        )
    )
    tune_space = space.to_tune()
    assert isinstance(tune_space["a"], Categorical) and tune_space["b"] == {"grid_search": ["x", "y"]}
    assert isinstance(tune_space["c"], Float) and isinstance(tune_space["d"], Integer) and tune_space["e"] == 7
    assert space.grid_size() == 2 and space.values("e") == [7]


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("space:\n  a: {choice: []}\n", "a: choice needs a non-empty list"),
        ("space:\n  a: {uniform: [1, 0]}\n", "a: uniform needs [lo, hi]"),
        ("space:\n  a: {loguniform: [0, 1]}\n", "loguniform needs lo > 0"),
        ("space:\n  a: {choice: [1], grid: [2]}\n", "exactly one of"),
        ("space:\n  typo: {choice: [1]}\n", "typo: unknown key"),
        ("spaces:\n  a: 1\n", "non-empty `space:` section"),
        ("space:\n  a: {choice: [1]}\nevaluate_first:\n  - {b: 1}\n", "outside `space`"),
        ("space: [\n", "not valid YAML"),
    ],
)
def test_bad_files_name_the_file_and_the_problem(tmp_path, text, fragment):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as error:
        load_search_space(path, allowed_keys={"a"})
    assert fragment in str(error.value) and str(path) in str(error.value)


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_search_space(tmp_path / "nope.yaml")


def test_pareto_front_keeps_the_undominated_points():
    points = [(1.0, 0.5), (2.0, 0.4), (1.5, 0.5), (3.0, 0.1), (2.0, 0.3), (0.5, 0.6)]
    # (1.0, 0.5) is dominated by (1.5, 0.5); (2.0, 0.3) by (2.0, 0.4)
    assert pareto_front(points) == [5, 2, 1, 3]
    assert pareto_front([(1.0, 1.0), (1.0, 1.0)]) == [0, 1]  # equal points dominate neither


def test_the_sweep_always_times_the_draft_depth_evaluate_uses(tmp_path):
    # select_layer chose n = 4 for tiny-blip2-t5 while the sweep file's grid was [1, 2]: evaluate, which takes its d
    # from the sweep's trials at its n, then had none
    path = tmp_path / "sweep.yaml"
    path.write_text("space:\n  draft_layers: {grid: [1, 2]}\n  loss: {grid: [ce]}\n  draft_len: {grid: [2, 3]}\n")
    space = load_search_space(path)
    widened = space.with_grid_value("draft_layers", 4)
    assert widened.values("draft_layers") == [1, 2, 4] and widened.grid_size() == 6
    assert widened.values("draft_len") == [2, 3] and space.values("draft_layers") == [1, 2]  # the file's space intact
    assert space.with_grid_value("draft_layers", 2) is space


def test_the_sweep_times_draft_lengths_inside_its_trials_not_as_tune_trials(tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text(
        "space:\n  draft_layers: {grid: [1, 2]}\n  loss: {grid: [ce]}\n  draft_len: {grid: [2, growing]}\n"
        "evaluate_first:\n  - {draft_layers: 1, draft_len: 2}\n"
    )
    space = load_search_space(path)
    tuned = space.without("draft_len")
    assert set(tuned.space) == {"draft_layers", "loss"} and tuned.grid_size() == 2
    assert tuned.evaluate_first == [{"draft_layers": 1}] and space.values("draft_len") == [2, "growing"]


def test_a_sweep_space_without_draft_lengths_is_refused_before_any_trial(tmp_path):
    from pipeline.errors import ConfigError
    from pipeline.search.sweep import check_space
    from tests.conftest import tiny_params

    path = tmp_path / "sweep.yaml"
    path.write_text("space:\n  draft_layers: {grid: [1, 9]}\n  loss: {grid: [ce]}\n")
    with pytest.raises(ConfigError, match=r"draft_len: missing") as error:
        check_space(load_search_space(path), tiny_params(), num_layers=4)
    assert "draft_layers 9" in str(error.value)  # every problem in one message
