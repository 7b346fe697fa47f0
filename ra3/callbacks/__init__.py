"""Callbacks: ``EMCallback`` (the EM rounds) and ``PassAtKCallback`` (pass@k during fit)."""

from ra3.callbacks.em import EMCallback
from ra3.callbacks.evaluation import PassAtKCallback

__all__ = ["EMCallback", "PassAtKCallback"]
