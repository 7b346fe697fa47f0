"""Evaluation: pass@k of a model or of samples on code benchmarks (``passk``), its fit-time callback
(``PassAtKCallback``) and the thought metrics (``metrics``)."""

from ra3 import lazy_exports

_NAMES = {"PassAtKCallback": "ra3.evaluation.callback", "evaluate": "ra3.evaluation.passk"}
__getattr__ = lazy_exports(__name__, _NAMES)
__all__ = list(_NAMES)
