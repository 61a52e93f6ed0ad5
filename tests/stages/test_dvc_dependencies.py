"""dvc.yaml cannot drift from the code: every stage's `deps` cover every project module its code imports
(transitively) and every repository file it names or reads through params, and list no code it does not run — so an
edit re-runs exactly the stages it can change (`tests/stages/import_closure.py` derives both from the code)."""

from __future__ import annotations

import shutil

import pytest

from tests.conftest import ROOT
from tests.stages.import_closure import (
    covered,
    declared,
    dvc_stages,
    is_code,
    stage_code,
    write_code_deps,
)

STAGES = dvc_stages()
FIX = "run `make deps` (python -m tests.stages.import_closure --write) to update dvc.yaml"


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_every_module_a_stage_imports_is_one_of_its_deps(stage):
    deps = declared(STAGES[stage], "deps")
    missing = sorted(f for f in stage_code(stage).files() if not covered(f, deps))
    assert not missing, f"stage {stage} imports {missing}, which dvc.yaml does not list in its deps; {FIX}"


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_a_stage_lists_no_code_it_does_not_run(stage):
    files = stage_code(stage).files()
    for entry in (e for e in declared(STAGES[stage], "deps") if is_code(e)):
        listed = (
            {str(p.relative_to(ROOT)) for p in (ROOT / entry).rglob("*.py") if p.stat().st_size}
            if (ROOT / entry).is_dir()
            else {entry}
        )
        extra = sorted(listed - files)
        assert not extra, (
            f"stage {stage} lists {extra} in dvc.yaml but does not import them "
            f"(an edit would re-run it needlessly); {FIX}"
        )


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_every_file_a_stage_reads_or_writes_is_declared(stage):
    code = stage_code(stage)
    entries = declared(STAGES[stage], "deps", "outs", "metrics", "plots")
    # a folder the stage writes into (e.g. reports/figures) counts when its files are declared
    undeclared = sorted(
        p
        for p in code.named_paths | code.param_files
        if not covered(p, entries) and not any(covered(e, {p}) for e in entries)
    )
    assert not undeclared, (
        f"stage {stage} reads or writes {undeclared}, which dvc.yaml declares neither as deps nor as outs"
    )


def test_a_new_import_is_caught_and_named(tmp_path):
    """The check bites: a stage that starts importing a module dvc.yaml does not list fails, naming both."""
    for name in ("pipeline", "stages", "dvc.yaml"):
        source = ROOT / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, tmp_path / name)
    (tmp_path / "pipeline/throwaway.py").write_text("VALUE = 1\n")
    stage_file = tmp_path / "stages/select_layer.py"
    stage_file.write_text(
        stage_file.read_text().replace("from pipeline import tracking\n", "from pipeline import throwaway, tracking\n")
    )
    code = stage_code("select_layer", tmp_path)
    deps = declared(dvc_stages(tmp_path)["select_layer"], "deps")
    assert [f for f in code.files(tmp_path) if not covered(f, deps)] == ["pipeline/throwaway.py"]
    write_code_deps(tmp_path)  # the fix the failure message names
    assert "pipeline/throwaway.py" in declared(dvc_stages(tmp_path)["select_layer"], "deps")
    assert "pipeline/throwaway.py" not in declared(dvc_stages(tmp_path)["finetune"], "deps")


def test_decoding_code_is_not_a_dependency_of_the_backbones_training():
    """An edit to the decoder must never retrain the backbone (or regenerate the data)."""
    for stage in ("prepare", "finetune"):
        assert not [f for f in stage_code(stage).files() if f.startswith(("pipeline/decoding/", "pipeline/search/"))], (
            stage
        )
