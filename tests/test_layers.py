"""Layers that import only downward: every module of biotransformer has a layer, imports (at
module level, inside functions and under ``TYPE_CHECKING`` alike) go to its own layer or a
lower one, and no chain of imports comes back to where it started.

    core -> presentation -> runtime -> workflows -> cli

``presentation`` (plots and reports: functions of arrays and log files) sits below the
workflows that call it and above nothing but ``core``; it imports no torch, so it cannot run
a model. ``docs/internals.md`` draws the same map.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "biotransformer"
ORDER = ("core", "presentation", "runtime", "workflows", "cli")

LAYERS: dict[str, str] = {
    # core: the data and the model, no run around them
    "biotransformer": "core",  # __version__ and the lazily imported public names
    "biotransformer.errors": "core",
    "biotransformer.atomic": "core",
    "biotransformer.constants": "core",
    "biotransformer.environment": "core",
    "biotransformer.io": "core",
    "biotransformer.tokenizers": "core",
    "biotransformer.config": "core",
    "biotransformer.tasks": "core",
    "biotransformer.model": "core",
    "biotransformer.heads": "core",
    "biotransformer.metrics": "core",
    "biotransformer.windows": "core",
    "biotransformer.strands": "core",
    "biotransformer.splits": "core",
    "biotransformer.synthetic": "core",
    "biotransformer.memory": "core",
    "biotransformer.lora": "core",
    "biotransformer.interop": "core",
    "biotransformer.hub": "core",
    "biotransformer.data": "core",
    "biotransformer.data.collator": "core",
    "biotransformer.data.sampler": "core",
    "biotransformer.data.shards": "core",
    # presentation: functions of arrays and log files
    "biotransformer.plots": "presentation",
    "biotransformer.report": "presentation",
    # runtime: the accelerator, processes, checkpoints and run directories
    "biotransformer.runtime": "runtime",
    "biotransformer.sharding": "runtime",
    "biotransformer.checkpointing": "runtime",
    "biotransformer.outputs": "runtime",
    "biotransformer.devices": "runtime",
    # workflows: runs of a model
    "biotransformer.engine": "workflows",
    "biotransformer.train": "workflows",
    "biotransformer.finetune_data": "workflows",
    "biotransformer.finetuning": "workflows",
    "biotransformer.finetune_defaults": "workflows",
    "biotransformer.verdict": "workflows",
    "biotransformer.inference": "workflows",
    "biotransformer.streaming": "workflows",
    "biotransformer.variants": "workflows",
    "biotransformer.saliency": "workflows",
    "biotransformer.visualize": "workflows",
    "biotransformer.contacts": "workflows",
    "biotransformer.baselines": "workflows",
    "biotransformer.quickstart": "workflows",
    "biotransformer.dataset_cards": "workflows",
    "biotransformer.api": "workflows",  # the Python API; it implements the models' embed...
    # cli: one module per command
    "biotransformer.__main__": "cli",
    "biotransformer.cli": "cli",
}
FOLDER_LAYERS = {"biotransformer.config.": "core", "biotransformer.cli.": "cli"}
NO_TORCH = {"presentation"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module: str) -> str | None:
    if module in LAYERS:
        return LAYERS[module]
    folders = (layer for prefix, layer in FOLDER_LAYERS.items() if module.startswith(prefix))
    return next(folders, None)


def imports_of(module: str) -> set[str]:
    """Every name imported anywhere in ``module`` (functions and ``TYPE_CHECKING`` included),
    resolved to a module: ``from biotransformer import plots`` is ``biotransformer.plots``."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.add(submodule if submodule in MODULES else base)
    return found


def internal_imports(module: str) -> set[str]:
    return {name for name in imports_of(module) if name in MODULES and name != module}


def test_every_module_has_a_layer() -> None:
    missing = sorted(module for module in MODULES if layer_of(module) is None)
    assert not missing, (
        f"{missing} have no layer: add each to LAYERS in tests/test_layers.py (one of {ORDER}) "
        "and to the module map in docs/internals.md"
    )


def test_the_table_names_existing_modules_and_layers() -> None:
    assert set(LAYERS.values()) | set(FOLDER_LAYERS.values()) <= set(ORDER)
    assert not sorted(set(LAYERS) - set(MODULES)), "remove the table rows of deleted modules"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_go_only_downward_or_sideways(module: str) -> None:
    layer = layer_of(module)
    if layer is None:
        pytest.skip("no layer: test_every_module_has_a_layer names it")
    upward = sorted(
        f"{name} ({layer_of(name)})"
        for name in internal_imports(module)
        if ORDER.index(layer_of(name) or "cli") > ORDER.index(layer)
    )
    assert not upward, f"{module} ({layer}) imports a higher layer: {upward}"
    if layer in NO_TORCH:
        assert not {name for name in imports_of(module) if name.split(".")[0] == "torch"}, (
            f"{module} ({layer}) imports torch: plots and reports draw arrays, they do not run "
            "a model (do that in a workflow, e.g. biotransformer/visualize.py)"
        )


def test_no_import_cycle() -> None:
    graph = {module: internal_imports(module) for module in MODULES}
    done: set[str] = set()

    def visit(module: str, chain: list[str]) -> None:
        if module in chain:
            cycle = [*chain[chain.index(module) :], module]
            raise AssertionError(f"import cycle: {' -> '.join(cycle)}")
        if module in done:
            return
        for name in sorted(graph[module]):
            visit(name, [*chain, module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])
