"""Old import path (ra3 <= 0.2): the LightningModules now live in their wings (``ra3.em``, ``ra3.rlvr``,
``ra3.policy``); configs naming ``ra3.modules.<Class>`` keep working."""

from ra3 import lazy_exports

_NAMES = {"PolicyModule": "ra3.policy.module", "MStepModule": "ra3.em.mstep", "EStepModule": "ra3.em.estep",
          "RLVRModule": "ra3.rlvr.module"}
__getattr__ = lazy_exports(__name__, _NAMES)
__all__ = list(_NAMES)
