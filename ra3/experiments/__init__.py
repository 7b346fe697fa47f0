"""Experiments: the study (``Study``: NTP vs oracle vs RA3, then RLVR, over several bases, with paired CIs), its
report and statistics, the one-base ``quickstart`` and the diagnostic corpora."""

from ra3 import lazy_exports

_NAMES = {"Study": "ra3.experiments.study", "quickstart": "ra3.experiments.quickstart"}
__getattr__ = lazy_exports(__name__, _NAMES)
__all__ = list(_NAMES)
