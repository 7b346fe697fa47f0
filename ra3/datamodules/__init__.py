"""Data: line segments, the skill world, benchmarks (no Lightning), and ``CodeDataModule`` (Lightning)."""


def __getattr__(name):
    if name == "CodeDataModule":  # imported lazily so the leaf modules of this package stay Lightning-free
        from ra3.datamodules.code import CodeDataModule

        return CodeDataModule
    raise AttributeError(name)


__all__ = ["CodeDataModule"]
