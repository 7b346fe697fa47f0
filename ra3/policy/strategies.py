"""``FSDP2Strategy``: Lightning's ``ModelParallelStrategy`` set up for pure FSDP2 data parallelism.

``ModelParallelStrategy`` defaults to ``data_parallel_size = num_nodes`` and ``tensor_parallel_size =
devices``; ra3 applies FSDP2 only (``PolicyModule.configure_model``), so this subclass makes every process a
data-parallel rank: in a config, ``trainer.strategy: ra3.policy.strategies.FSDP2Strategy`` is all it takes, on CPU
(gloo) or GPU (nccl), on one node or many (``--trainer.num_nodes``).
"""

from __future__ import annotations

from lightning.pytorch.strategies import ModelParallelStrategy


class FSDP2Strategy(ModelParallelStrategy):
    """FSDP2 over all processes (``data_parallel_size = num_nodes × devices``, no tensor parallelism).

    Args:
        save_distributed_checkpoint: each rank saves its shard (a checkpoint folder; ``ra3 consolidate``
            turns it into a ``save_pretrained`` directory); ``False`` gathers a single file on rank 0.
        process_group_backend: ``gloo``/``nccl`` (default: by device).
    """

    def __init__(self, save_distributed_checkpoint: bool = True, process_group_backend: str | None = None, **kwargs):
        super().__init__(data_parallel_size="auto", tensor_parallel_size=1,
                         save_distributed_checkpoint=save_distributed_checkpoint,
                         process_group_backend=process_group_backend, **kwargs)

    def setup_environment(self) -> None:
        if self._data_parallel_size == "auto":
            self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()


def register() -> None:
    """Make ``--trainer.strategy fsdp2`` (and ``fsdp2_single_file``: one checkpoint file on rank 0) available."""
    from lightning.pytorch.strategies import StrategyRegistry

    if "fsdp2" not in StrategyRegistry:
        StrategyRegistry.register("fsdp2", FSDP2Strategy, description="FSDP2 data parallelism over all processes")
        StrategyRegistry.register("fsdp2_single_file", FSDP2Strategy, description="FSDP2, checkpoints gathered on rank 0",
                                  save_distributed_checkpoint=False)
