"""What a DVC stage's code is, derived from the code itself: the project modules a stage imports (transitively, at
module level or inside functions, but not under `if TYPE_CHECKING:`), and the repository files it names.

`python -m tests.stages.import_closure` prints, per stage of dvc.yaml, the code `deps` its imports need;
`--write` puts them into dvc.yaml (the other deps, outs and params stay as they are).
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("pipeline", "stages")
# Files a stage names in code that are its resume state, not a dependency or an output
STATE = ("checkpoints/", "ray_results")
# Params naming repository files: whoever reads the attribute chain depends on the file its default names
PARAM_FILES = {
    ("data", "out_dir"): "data/prepared",
    ("nas", "search_space"): "experiments/search_spaces/nas.yaml",
    ("sweep", "search_space"): "experiments/search_spaces/sweep.yaml",
}


def module_file(module: str, root: Path = ROOT) -> Path | None:
    path = root.joinpath(*module.split("."))
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return path.with_suffix(".py") if path.with_suffix(".py").is_file() else None


def _runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node except those under `if TYPE_CHECKING:` (imports for annotations only)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            stack.extend(node.orelse)
            continue
        yield node
        stack.extend(ast.iter_child_nodes(node))


def imported_modules(path: Path, module: str) -> set[str]:
    """Project modules `path` imports: `import a.b`, `from a import b` (b a module or a name in a)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in _runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, *([node.module] if node.module else [])])
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {m for m in found if m.split(".")[0] in PACKAGES}


@dataclass
class StageCode:
    modules: dict[str, Path] = field(default_factory=dict)  # module → file, every project module the stage runs
    named_paths: set[str] = field(default_factory=set)  # repository paths in `Path("...")` literals of the stage file
    param_files: set[str] = field(default_factory=set)  # files named by params the stage's code reads

    def files(self, root: Path = ROOT) -> set[str]:
        """Repository-relative files of the closure (empty package `__init__`s left out: they hold no code)."""
        return {str(f.relative_to(root)) for f in self.modules.values() if f.stat().st_size}


def stage_code(stage: str, root: Path = ROOT) -> StageCode:
    code = StageCode()
    todo = [f"stages.{stage}"]
    while todo:
        module = todo.pop()
        parts = module.split(".")
        for depth in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__, a/b/__init__ too
            name = ".".join(parts[:depth])
            path = module_file(name, root)
            if path is not None and name not in code.modules:
                code.modules[name] = path
                todo.extend(imported_modules(path, name))
    for path in code.modules.values():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute):
                chain = ast.unparse(node).split(".")
                for (section, name), file in PARAM_FILES.items():
                    if chain[-2:] == [section, name]:
                        code.param_files.add(file)
    stage_file = root / "stages" / f"{stage}.py"
    for node in ast.walk(ast.parse(stage_file.read_text())):
        if (
            isinstance(node, ast.Call)
            and ast.unparse(node.func) == "Path"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and not node.args[0].value.startswith(STATE)
        ):
            code.named_paths.add(node.args[0].value.rstrip("/"))
    return code


def declared(stage: dict, *kinds: str) -> set[str]:
    """The paths of a dvc.yaml stage's entries of `kinds` (deps, outs, metrics, plots)."""
    paths = set()
    for kind in kinds:
        for entry in stage.get(kind, []):
            paths.add(next(iter(entry)) if isinstance(entry, dict) else entry)
    return paths


def covered(path: str, entries: set[str]) -> bool:
    """`path` is an entry or lies under a directory entry."""
    return any(path == e or path.startswith(e.rstrip("/") + "/") for e in entries)


def dvc_stages(root: Path = ROOT) -> dict[str, dict]:
    return yaml.safe_load((root / "dvc.yaml").read_text())["stages"]


def code_deps(files: set[str], root: Path = ROOT) -> list[str]:
    """dvc.yaml entries covering exactly `files`: a whole directory when all of its code is in `files`, else files."""
    entries = set()
    for file in files:
        folder = Path(file).parent
        code = {str(p.relative_to(root)) for p in (root / folder).glob("*.py") if p.stat().st_size}
        entries.add(str(folder) if code <= files and folder != Path("stages") else file)
    return sorted(entries)


def is_code(entry: str) -> bool:
    return entry.split("/")[0] in PACKAGES


def write_code_deps(root: Path = ROOT) -> None:
    """Rewrite the code entries of every stage's `deps` in dvc.yaml (text edit: the file's layout is kept)."""
    lines = (root / "dvc.yaml").read_text().splitlines()
    out, stage, in_deps = [], None, False
    for line in lines:
        stripped = line.strip()
        if line.startswith("  ") and not line.startswith("    ") and stripped.endswith(":"):
            stage = stripped[:-1]
        if stripped == "deps:":
            in_deps = True
            out.append(line)
            indent = line[: len(line) - len(line.lstrip())] + "  "
            out += [f"{indent}- {entry}" for entry in code_deps(stage_code(stage, root).files(root), root)]
            continue
        if in_deps and stripped.startswith("- "):
            if is_code(stripped[2:]):
                continue
        elif in_deps:
            in_deps = False
        out.append(line)
    (root / "dvc.yaml").write_text("\n".join(out) + "\n")


def main(argv: list[str]) -> None:
    if "--write" in argv:
        write_code_deps()
    for name in dvc_stages():
        print(f"{name}:\n" + "".join(f"      - {entry}\n" for entry in code_deps(stage_code(name).files())))


if __name__ == "__main__":
    main(sys.argv[1:])
