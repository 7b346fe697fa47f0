"""Old import path (ra3 <= 0.2): ``EMCallback`` now lives in ``ra3.em``, ``PassAtKCallback`` in ``ra3.evaluation``."""

from ra3 import lazy_exports

__getattr__ = lazy_exports(__name__, {"EMCallback": "ra3.em.callback", "PassAtKCallback": "ra3.evaluation.callback"})
__all__ = ["EMCallback", "PassAtKCallback"]
