"""The package's layout and layering: leaf modules never import Lightning, each layer imports only the layers below
it (the two method wings — ``em`` and ``rlvr`` — not each other), no import circle, a small package root, and the
recipe — not the module — connects the data."""

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LEAVES = ["ra3", "ra3.hf", "ra3.errors", "ra3.execution", "ra3.data.rows", "ra3.data.sources", "ra3.data.prep",
          "ra3.data.io", "ra3.data.benchmarks", "ra3.data.skillworld", "ra3.data.segments", "ra3.data.tokenizer",
          "ra3.rollout", "ra3.rollout.sampling", "ra3.rollout.hf_engine", "ra3.rollout.ragged_engine",
          "ra3.rollout.ragged_cache", "ra3.em.latent", "ra3.rlvr.rewards", "ra3.policy.sharding", "ra3.policy.rl",
          "ra3.policy.peft", "ra3.policy.attention", "ra3.evaluation.passk", "ra3.experiments.stats",
          # the packages themselves (and the old import paths) export lazily: importing them loads no Lightning
          "ra3.em", "ra3.rlvr", "ra3.policy", "ra3.data", "ra3.evaluation", "ra3.experiments", "ra3.modules",
          "ra3.datamodules", "ra3.callbacks"]
# each top-level part of ra3 and its layer: a module imports only its own part and lower layers
LAYERS = {"ra3": 0, "ra3.errors": 0, "ra3.hf": 1, "ra3.execution": 1, "ra3.data": 2, "ra3.rollout": 3,
          "ra3.policy": 4, "ra3.evaluation": 5, "ra3.em": 6, "ra3.rlvr": 6, "ra3.experiments": 7, "ra3.config_docs": 7,
          "ra3.cli": 8, "ra3.modules": 8, "ra3.datamodules": 8, "ra3.callbacks": 8}


def _modules() -> dict[str, Path]:
    out = {}
    for path in (ROOT / "ra3").rglob("*.py"):
        out[".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")] = path
    return out


def _imports(path: Path) -> set[str]:
    """Every ``ra3...`` name imported anywhere in the file (inside functions too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
        elif isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
    return {n for n in names if n == "ra3" or n.startswith("ra3.")}


def _part(name: str) -> str:
    """``ra3.em`` for ``ra3.em.loop.run_em``; ``ra3`` for the root package's own names (``ra3.lazy_exports``)."""
    two = ".".join(name.split(".")[:2])
    return two if two in LAYERS else "ra3"


@pytest.mark.parametrize("module", LEAVES)
def test_leaf_modules_do_not_import_lightning(module):
    code = f"import sys, {module}; bad = [m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning')]; print(bad)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]", f"{module} imports {out.stdout.strip()}"


def test_each_layer_imports_only_its_own_part_and_the_layers_below():
    """Not even inside a function body: data knows nothing of rollouts, rollouts nothing of training, the policy
    nothing of the methods, and the E-step/EM wing and the RLVR wing nothing of each other."""
    bad = []
    for name, path in _modules().items():
        mine = _part(name)
        assert mine in LAYERS and (mine != "ra3" or name == "ra3"), f"{name} belongs to no part in LAYERS"
        for target in _imports(path):
            other = _part(target)
            if other != mine and other != "ra3" and (LAYERS[other] > LAYERS[mine] or LAYERS[other] == LAYERS[mine]):
                bad.append(f"{name} imports {target}")
    assert not bad, bad


def test_no_import_circle_between_the_packages_modules():
    """Not even through imports inside functions: the import graph of ``ra3`` has no cycle."""
    modules = _modules()
    graph = {name: {m for m in _imports(path) if m in modules} - {name} for name, path in modules.items()}

    def reaches(start, goal, seen):
        return any(d == goal or (d not in seen and not seen.add(d) and reaches(d, goal, seen)) for d in graph[start])

    circles = sorted(f"{a} <-> {b}" for a in graph for b in graph[a] if a < b and reaches(b, a, set()))
    assert not circles, circles


def test_the_package_root_holds_few_modules():
    root = sorted(p.name for p in (ROOT / "ra3").glob("*.py"))
    assert len(root) <= 6, root


def test_no_module_connects_the_data_itself():
    """The recipe (``ra3 fit``'s CLI, ``run_em``) calls ``data.connect(...)``; no LightningModule's code does."""
    for path in [*(ROOT / "ra3" / "policy").glob("*.py"), *(ROOT / "ra3" / "em").glob("*.py"), *(ROOT / "ra3" / "rlvr").glob("*.py")]:
        if path.name == "loop.py":  # run_em is a recipe
            continue
        calls = [n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Call)
                 and isinstance(n.func, ast.Attribute) and n.func.attr == "connect"]
        assert not calls, f"{path.relative_to(ROOT)} calls connect()"


@pytest.mark.parametrize("old,new", [("ra3.modules.MStepModule", "ra3.em.mstep.MStepModule"),
                                     ("ra3.modules.EStepModule", "ra3.em.estep.EStepModule"),
                                     ("ra3.modules.RLVRModule", "ra3.rlvr.module.RLVRModule"),
                                     ("ra3.modules.PolicyModule", "ra3.policy.module.PolicyModule"),
                                     ("ra3.datamodules.CodeDataModule", "ra3.data.datamodule.CodeDataModule"),
                                     ("ra3.callbacks.EMCallback", "ra3.em.callback.EMCallback"),
                                     ("ra3.callbacks.PassAtKCallback", "ra3.evaluation.callback.PassAtKCallback"),
                                     ("ra3.em.MStepModule", "ra3.em.mstep.MStepModule"),
                                     ("ra3.rlvr.RLVRModule", "ra3.rlvr.module.RLVRModule"),
                                     ("ra3.data.CodeDataModule", "ra3.data.datamodule.CodeDataModule")])
def test_short_and_old_class_paths_name_the_same_class(old, new):
    """Configs name classes by these paths (the old ones in users' configs from ra3 <= 0.2)."""
    def load(path):
        module, _, name = path.rpartition(".")
        return getattr(importlib.import_module(module), name)

    assert load(old) is load(new)
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        load(old.rpartition(".")[0] + ".Nope")
