"""The LightningModules: ``PolicyModule`` (shared policy plumbing), ``MStepModule``, ``EStepModule``, ``RLVRModule``.

Imported lazily, so that ``ra3.modules.sharding`` (Lightning-free) can be used without Lightning."""

_CLASSES = {"PolicyModule": "policy", "MStepModule": "mstep", "EStepModule": "estep", "RLVRModule": "rlvr"}


def __getattr__(name):
    if name in _CLASSES:
        import importlib

        return getattr(importlib.import_module(f"ra3.modules.{_CLASSES[name]}"), name)
    raise AttributeError(f"module 'ra3.modules' has no attribute {name!r}")


__all__ = list(_CLASSES)
