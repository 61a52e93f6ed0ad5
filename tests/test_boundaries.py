"""The library's boundaries, checked on the code: MLflow only in `pipeline/tracking.py`, Ray only in
`pipeline/search/`, Lightning only in `pipeline/training/`; the library never imports stages or experiments; only
the stage tests import stages."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import ROOT

CODE = sorted(p for folder in ("pipeline", "stages", "experiments") for p in (ROOT / folder).rglob("*.py"))
TESTS = sorted((ROOT / "tests").rglob("*.py"))
# third-party package → where in the project it may be imported
OWNERS = {"mlflow": ("pipeline/tracking.py",), "ray": ("pipeline/search/",), "lightning": ("pipeline/training/",)}


def imports(path: Path) -> set[str]:
    """Top-level packages `path` imports, anywhere in the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module.split(".")[0])
    return found


def where(path: Path) -> str:
    return str(path.relative_to(ROOT))


@pytest.mark.parametrize("package", sorted(OWNERS))
def test_each_integration_lives_in_one_place(package):
    owners = OWNERS[package]
    offenders = [where(p) for p in CODE if package in imports(p) and not where(p).startswith(owners)]
    assert not offenders, f"{package} is imported outside {owners}: {offenders}"


def test_the_library_never_imports_stages_or_experiments():
    offenders = [where(p) for p in CODE if where(p).startswith("pipeline/") and imports(p) & {"stages", "experiments"}]
    assert not offenders


def test_only_stage_tests_import_stages():
    offenders = [where(p) for p in TESTS if "stages" in imports(p) and not where(p).startswith("tests/stages/")]
    assert not offenders, f"tests import the library, not a stage: {offenders}"


def test_the_checks_see_imports_inside_functions(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    from ray import tune\n    import mlflow.entities\n")
    assert imports(sample) == {"ray", "mlflow"}
