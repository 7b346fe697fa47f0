"""ra3: RA3 mid-training (Reasoning as Action Abstractions) and RLVR for code LLMs, on PyTorch Lightning.

One wing per method — ``ra3.em`` (E-step, bootstrap, M-step, the EM loop), ``ra3.rlvr`` — on ``ra3.policy`` (the
Lightning plumbing every phase shares), ``ra3.data``, ``ra3.rollout`` (samplers), ``ra3.execution`` (the sandbox),
``ra3.evaluation`` and ``ra3.experiments`` (quickstart, study). See docs/development.md for the layout.
"""

__version__ = "0.4.0"


def lazy_exports(package: str, names: dict[str, str]):
    """A module ``__getattr__`` giving ``names[attr]`` (a module path) ``.attr`` on first use, so a package imports
    nothing heavy (Lightning) until one of its names is asked for."""

    def __getattr__(attr: str):
        if attr in names:
            import importlib

            return getattr(importlib.import_module(names[attr]), attr)
        raise AttributeError(f"module {package!r} has no attribute {attr!r}")

    return __getattr__
