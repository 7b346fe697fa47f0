"""Data: ``CodeDataModule`` (Lightning) and the Lightning-free pieces it reads with — sources, rows, line segments,
the skill world, benchmarks, the tokenizer, corpus preparation (``prep``)."""

from ra3 import lazy_exports

_NAMES = {"CodeDataModule": "ra3.data.datamodule"}
__getattr__ = lazy_exports(__name__, _NAMES)
__all__ = list(_NAMES)
