from ra3.datamodules.code import CodeDataModule

__all__ = ["CodeDataModule"]
