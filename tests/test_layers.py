"""The package's layering: leaf modules never import Lightning, and the data layer never imports the modules."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LEAVES = ["ra3.hf", "ra3.rows", "ra3.stats", "ra3.sources", "ra3.dataprep", "ra3.evaluation", "ra3.rewards", "ra3.execution",
          "ra3.rollout.generate", "ra3.rollout.sampler", "ra3.rollout.latent", "ra3.rollout.ragged",
          "ra3.datamodules.benchmarks", "ra3.datamodules.skillworld", "ra3.datamodules.segments", "ra3.modules.sharding",
          "ra3.modules.rl"]
# the floors above the data, rollout and execution layers: those layers never import them
UPPER = ("ra3.modules", "ra3.callbacks", "ra3.cli", "ra3.bootstrap", "ra3.quickstart", "ra3.study", "ra3.strategies",
         "ra3.consolidate")


@pytest.mark.parametrize("module", LEAVES)
def test_leaf_modules_do_not_import_lightning(module):
    code = f"import sys, {module}; bad = [m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning')]; print(bad)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]", f"{module} imports {out.stdout.strip()}"


@pytest.mark.parametrize("package", ["datamodules", "rollout", "execution"])
def test_lower_layers_never_import_upward(package):
    """Not even inside a function body: the tokenizer and the tests reach the data layer from ``ra3.hf`` and the
    Lightning-free row helpers, never from ``ra3.modules``; rollout and execution know nothing of training."""
    for path in (ROOT / "ra3" / package).glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n == u or n.startswith(u + ".") for n in names for u in UPPER), f"{package}/{path.name}: {names}"


def test_no_import_circle_between_the_packages_modules():
    """Not even through imports inside functions: the import graph of ``ra3`` has no cycle."""
    modules = {}
    for path in (ROOT / "ra3").rglob("*.py"):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        modules[name.removesuffix(".__init__")] = path
    graph = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                deps |= {m for m in (node.module, *(f"{node.module}.{a.name}" for a in node.names)) if m in modules}
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name in modules}
        graph[name] = deps - {name}

    def reaches(start, goal, seen):
        return any(d == goal or (d not in seen and not seen.add(d) and reaches(d, goal, seen)) for d in graph[start])

    circles = sorted(f"{a} <-> {b}" for a in graph for b in graph[a] if a < b and reaches(b, a, set()))
    assert not circles, circles
