"""PassAtKCallback: pass@k of the policy on a benchmark during fit, logged to the Trainer's logger."""

from __future__ import annotations

import contextlib

import lightning as L
import torch
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_warn

from ra3.data.benchmarks import load_benchmark
from ra3.evaluation.passk import sample_and_score, task_counts
from ra3.execution import SandboxPool
from ra3.evaluation.metrics import PassAtK
from ra3.rollout.sampling import SamplingConfig
from ra3.rollout import make_engine


class PassAtKCallback(L.Callback):
    """Generate, execute and score after validation every ``every_n_val`` validation runs.

    Each process scores its own slice of the problems; ``PassAtK`` sums them across processes.
    Logs ``eval/<benchmark>/pass@k`` and, with a W&B logger, a table of samples with their status.

    Args:
        benchmark: benchmark name (see ``ra3.data.benchmarks.BENCHMARKS``).
        source: the benchmark's data (file, datasets directory or hub name).
        n_samples: samples per problem.
        k: the k of pass@k to log.
        temperature: sampling temperature (0 = greedy).
        max_new_tokens: tokens per completion at most.
        limit: evaluate the first ``limit`` problems only.
        every_n_val: run after every n-th validation loop.
        batch_size: generation batch size.
        table_rows: samples per W&B table (0 = no table).
        workers: sandbox processes.
        engine: sampler, ``ragged`` (continuous batching), ``ragged_compiled`` (its steps under
            ``torch.compile``) or ``hf`` (``model.generate``; the same completions as ``ragged``).
    """

    def __init__(self, benchmark: str = "skillworld", source: str | None = None, n_samples: int = 1,
                 k: list[int] | None = None, temperature: float = 0.0, max_new_tokens: int = 256,
                 limit: int | None = None, every_n_val: int = 1, batch_size: int = 32, table_rows: int = 20,
                 workers: int | None = None, engine: str = "ragged"):
        self.benchmark, self.source, self.n_samples = benchmark, source, n_samples
        self.ks = k or [1]
        self.sampling = SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature, batch_size=batch_size)
        self.limit, self.every_n_val, self.table_rows, self.workers = limit, every_n_val, table_rows, workers
        self.engine = engine
        self._pool: SandboxPool | None = None
        self._problems = None
        self._calls = 0
        self.last: dict[str, float] = {}

    def setup(self, trainer, pl_module, stage: str) -> None:
        self._pool = SandboxPool(workers=self.workers)
        problems = load_benchmark(self.benchmark, self.source, pool=self._pool)
        problems = problems[: self.limit] if self.limit else problems
        self._problems = problems[trainer.global_rank :: trainer.world_size]

    def teardown(self, trainer, pl_module, stage: str) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        self._calls += 1
        if (self._calls - 1) % self.every_n_val:
            return
        self.last = self.run(trainer, pl_module)

    @torch.no_grad()
    def run(self, trainer, pl_module) -> dict[str, float]:
        engine = make_engine(self.engine, pl_module.model, pl_module.tokenizer)
        gather = pl_module.generation() if hasattr(pl_module, "generation") else contextlib.nullcontext()
        with gather:  # sharded: full weights once, so ranks generating different amounts never wait on each other
            _, rows, samples = sample_and_score(engine, self._problems, self.n_samples, self.sampling, self._pool, self.ks)
        metric = PassAtK(self.ks).to(pl_module.device)
        counts = task_counts(rows)
        if counts:
            metric.update([n for n, _ in counts.values()], [c for _, c in counts.values()])
        values = {f"eval/{self.benchmark}/{name}": v.item() for name, v in metric.compute().items()}
        for name, value in values.items():
            pl_module.log(name, value, sync_dist=False)  # already summed across processes by PassAtK
        if self.table_rows and isinstance(trainer.logger, WandbLogger) and trainer.is_global_zero:
            try:
                data = [[s["task_id"], s["completion"], r["status"]] for s, r in list(zip(samples, rows))[: self.table_rows]]
                trainer.logger.log_table(f"eval/{self.benchmark}/samples", columns=["task_id", "completion", "status"],
                                         data=data, step=trainer.global_step)
            except Exception as e:  # W&B trouble never stops training
                rank_zero_warn(f"could not log the W&B samples table: {e}")
        return values
