"""The policy every phase trains: ``PolicyModule`` (loading, optimisation, export as a LightningModule), LoRA
(``peft``), packed attention masks, FSDP2 sharding and strategies, the RL loss pieces (``rl``: no Lightning)."""

from ra3 import lazy_exports

_NAMES = {"PolicyModule": "ra3.policy.module"}
__getattr__ = lazy_exports(__name__, _NAMES)
__all__ = list(_NAMES)
