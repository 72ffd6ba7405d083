"""The import graph of src/openwan follows the layering of docs/design.md.

Every ``import`` / ``from ... import`` of every module is read from its syntax tree, those inside functions
included, and checked against the rules below; a failure lists each offending module and line.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
ROOT = "openwan"  # the package root (openwan/__init__.py): the composition root, may import every layer but cli
CONFIG_LAYER = {"configs", "configio"}  # typed configs and their parser: what every layer shares
INFERENCE = {"models", "checkpoints", "runtime", "pipelines", "diffusion"}

BASE = CONFIG_LAYER | {"fileio"}  # what the layers from runtime/ up may always import

# package -> the openwan packages it may import (besides itself); a package not listed: any but FORBIDDEN's.
ALLOWED: dict[str, set[str]] = {
    "configio": set(),
    "configs": {"configio"},
    "fileio": set(),
    "endpoints": set(),
    "models": CONFIG_LAYER,
    "checkpoints": CONFIG_LAYER | {"fileio"},
    "diffusion": set(),
    "runtime": BASE | {"models", "checkpoints"},
    "parallel": BASE | {"models"},
    "data": BASE | {"models"},
    "pipelines": BASE | {"models", "checkpoints", "diffusion", "runtime", "data", "parallel", "endpoints"},
    # checkpoints: the embedders' weights; endpoints: the captioner's OpenAI-compatible client
    "curate": BASE | {"data", "models", "checkpoints", "endpoints"},
}
# package -> openwan packages it must never import.
FORBIDDEN: dict[str, set[str]] = {
    **{package: {"train", "eval", "recipes"} for package in INFERENCE},
    "eval": {"train", "recipes"},
}
# module -> openwan packages it must never import, where its package's rules allow more: generating (LoRAs
# included) is inference, whatever the CLI around it may import.
MODULE_FORBIDDEN = {"openwan.cli.generate": {"train"}}
CLI_USERS = {"cli", "__main__"}  # the only modules that may import the CLI
# curation is a tool beside the model stack: only its command and the bench (which reuses its measures, OCR and
# embedders) import it
CURATE_USERS = {"cli", "eval"}


@dataclass(frozen=True)
class Import:
    module: str  # the importing module, e.g. openwan.models.dit
    line: int
    target: str  # the imported openwan module, e.g. openwan.checkpoints.io

    @property
    def where(self) -> str:
        return f"{self.module.replace('.', '/')}.py:{self.line}"


def _package(module: str) -> str:
    """The layer a module belongs to: openwan.models.dit -> models; openwan (the root) -> openwan."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ROOT


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(module: str, source: str, is_package: bool = False) -> list[Import]:
    """The openwan modules ``module`` imports anywhere in ``source`` (top level, functions, classes)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [Import(module, node.lineno, a.name) for a in node.names if a.name.split(".")[0] == ROOT]
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, is_package, node)
            if target.split(".")[0] != ROOT:
                continue
            if target == ROOT:  # `from openwan import checkpoints` imports the subpackage, not the root
                subpackages = [a.name for a in node.names if (SRC / ROOT / a.name).exists()
                               or (SRC / ROOT / f"{a.name}.py").exists()]
                found += [Import(module, node.lineno, f"{ROOT}.{name}") for name in subpackages]
                if len(subpackages) < len(node.names):
                    found.append(Import(module, node.lineno, ROOT))
            else:
                found.append(Import(module, node.lineno, target))
    return found


def violation(imp: Import) -> str | None:
    """Why ``imp`` breaks the layering, or None."""
    src, dst = _package(imp.module), _package(imp.target)
    if src == dst:
        return None
    if dst == "cli" and src not in CLI_USERS:
        return "only the CLI imports the CLI"
    if dst == "curate" and src not in CURATE_USERS:
        return "only the CLI imports curate/"
    if dst == "recipes":
        return "the recipes are scripts outside the package (recipes/); nothing imports them"
    if dst in MODULE_FORBIDDEN.get(imp.module, set()):
        return f"{imp.module} must not import {dst}/"
    if dst in FORBIDDEN.get(src, set()):
        return f"{src}/ must not import {dst}/"
    if src in ALLOWED and dst not in ALLOWED[src]:
        allowed = ", ".join(sorted(ALLOWED[src])) or "no other openwan package"
        return f"{src}/ may import only {allowed}"
    return None


def all_imports() -> list[Import]:
    found = []
    for path in sorted((SRC / ROOT).rglob("*.py")):
        rel = path.relative_to(SRC).with_suffix("")
        is_package = rel.name == "__init__"
        module = ".".join(rel.parent.parts if is_package else rel.parts)
        found += imports_of(module, path.read_text(), is_package)
    return found


def package_cycles(imports: list[Import]) -> list[list[str]]:
    """Cycles of the package graph (an arrow A -> B for each import from a module of A into B, A != B)."""
    graph: dict[str, set[str]] = {}
    for imp in imports:
        src, dst = _package(imp.module), _package(imp.target)
        if src != dst:
            graph.setdefault(src, set()).add(dst)
    cycles, state = [], {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    return cycles


def test_no_forbidden_import():
    problems = [f"{imp.where}: imports {imp.target} — {why}" for imp in all_imports() if (why := violation(imp))]
    assert not problems, "forbidden imports:\n" + "\n".join(problems)


def test_no_import_cycle_between_packages():
    imports = all_imports()
    report = []
    for cycle in package_cycles(imports):
        report.append(" -> ".join(cycle))
        for a, b in zip(cycle, cycle[1:]):
            report += [f"    {imp.where}: imports {imp.target}" for imp in imports
                       if _package(imp.module) == a and _package(imp.target) == b]
    assert not report, "import cycles between packages:\n" + "\n".join(report)


def test_the_walk_sees_every_kind_of_import():
    """Deferred, relative and `from openwan import x` imports are all arrows, and each rule fires."""
    source = (
        "import torch\n"
        "from openwan import checkpoints\n"
        "def f():\n"
        "    from ..train.trainer import Trainer\n"
        "    import openwan.cli.main\n"
    )
    found = imports_of("openwan.models.dit", source)
    assert [(i.line, i.target) for i in found] == [
        (2, "openwan.checkpoints"), (4, "openwan.train.trainer"), (5, "openwan.cli.main")]
    assert all(violation(i) for i in found)
    assert "must not import train/" in violation(Import("openwan.pipelines.wan", 1, "openwan.train.lora"))
    assert "must not import train/" in violation(Import("openwan.eval.sensitivity", 1, "openwan.train.checkpoint"))
    assert "outside the package" in violation(Import("openwan.eval.x", 1, "openwan.recipes.demo_model"))
    assert violation(Import("openwan.diffusion.objective", 1, "openwan.configs"))
    assert violation(Import("openwan.cli.generate", 1, "openwan.runtime.lora")) is None
    assert violation(Import("openwan.cli.generate", 1, "openwan.train.lora"))
    assert violation(Import("openwan.cli.train", 1, "openwan.train.lora")) is None
    assert violation(Import("openwan.models.dit", 1, "openwan.models.loading")) is None
    assert "only the CLI imports curate/" in violation(Import("openwan.train.trainer", 1, "openwan.curate.pipeline"))
    assert violation(Import("openwan.cli.curate", 1, "openwan.curate.pipeline")) is None
    assert "curate/ may import only" in violation(Import("openwan.curate.pipeline", 1, "openwan.train.config"))
    assert violation(Import("openwan.curate.embed", 1, "openwan.models.image_encoder")) is None
    assert package_cycles([Import("openwan.models.dit", 1, "openwan.checkpoints"),
                           Import("openwan.checkpoints.io", 1, "openwan.models.loading")]) == [
        ["checkpoints", "models", "checkpoints"]]


@pytest.mark.parametrize("package", sorted(ALLOWED | FORBIDDEN))
def test_every_ruled_package_exists(package):
    """A rule about a package that was renamed away would pass forever."""
    assert (SRC / ROOT / package).is_dir() or (SRC / ROOT / f"{package}.py").is_file()
