"""RLVR: ``RLVRModule`` (GRPO-family RL from unit-test rewards) and the reward functions (``ra3.rlvr.rewards``: no
Lightning)."""

from ra3 import lazy_exports

_NAMES = {"RLVRModule": "ra3.rlvr.module", "UnitTestReward": "ra3.rlvr.rewards", "FormatReward": "ra3.rlvr.rewards",
          "WeightedSum": "ra3.rlvr.rewards"}
__getattr__ = lazy_exports(__name__, _NAMES)
__all__ = list(_NAMES)
