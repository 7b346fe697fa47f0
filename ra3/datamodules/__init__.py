"""Old import path (ra3 <= 0.2): ``CodeDataModule`` now lives in ``ra3.data``; configs naming
``ra3.datamodules.CodeDataModule`` keep working."""

from ra3 import lazy_exports

__getattr__ = lazy_exports(__name__, {"CodeDataModule": "ra3.data.datamodule"})
__all__ = ["CodeDataModule"]
