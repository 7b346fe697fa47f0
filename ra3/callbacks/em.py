"""EMCallback: RA3's EM loop — E-step -> bootstrap -> M-step, for ``rounds`` rounds — with crash-safe resume.

Mechanism: a fresh ``Trainer`` per phase (re-calling ``fit`` on one Trainer with a changed ``max_steps`` is
fragile, Lightning #11425), all on one shared ``CodeDataModule`` and one W&B run. The policy is handed
from phase to phase as a ``save_pretrained`` directory: each E-step starts from the latest M-step
weights (the base model in round 0), each M-step from the E-step's weights (``mstep_init: estep``) or
from the previous M-step's (``previous``).

State (round, phase, shard and policy paths, RNG states) lives in ``<out_dir>/em_state.json``, written
atomically at every phase transition and also stored in every Lightning checkpoint the phases write
(every ``checkpoint_every_n_steps``). ``ra3 em ... --resume`` after a crash (even ``kill -9``) re-enters
the recorded phase: a training phase continues from its ``last.ckpt``, a bootstrap from its first
missing part, so no bootstrapped row is lost or duplicated.

This file is the whole EM driver: the state (``EMState``), the phases (``EMCallback.run``), the per-phase
module factories and the ``ra3 em`` command (``main``: its parser is the config's schema).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info

from ra3.io import atomic_write_text

PHASES = ("estep", "bootstrap", "mstep")


def _dist():
    """(rank, world size, initialised) of this process; before any Trainer from the launcher's env vars."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), True
    from lightning.fabric.utilities.rank_zero import _get_rank

    rank = (_get_rank() or 0) + int(os.environ.get("NODE_RANK", 0)) * int(os.environ.get("LOCAL_WORLD_SIZE", 1) or 1)
    return rank, int(os.environ.get("WORLD_SIZE", 1)), False


def _barrier() -> None:
    if _dist()[2]:
        import torch.distributed as dist

        dist.barrier()


@dataclass
class EMState:
    round: int = 0
    phase: str = "estep"
    policy: str = ""  # the latest policy (save_pretrained dir)
    shards: list[str] = field(default_factory=list)
    summaries: list[dict] = field(default_factory=list)
    done: bool = False
    python_rng: Any = None
    torch_rng: list[int] | None = None


class EMCallback(L.Callback):
    """Runs and checkpoints the EM rounds (see the module docstring).

    Args:
        rounds: EM rounds.
        estep_steps: E-step optimizer steps per round.
        mstep_steps: M-step optimizer steps per round.
        bootstrap_mode: keep the ``best`` of G annotations by E-step reward, the best among those with the fewest
            malformed thoughts (``best_well_formed``), or a ``sample``.
        bootstrap_group_size: G for bootstrapping (default: the E-step's group size).
        bootstrap_limit: annotate only the first N programs of the corpus (default: all).
        bootstrap_scope: ``train``: annotate the programs the E-step trains on (the corpus minus the data's held-out
            fraction); ``all``: every program of the corpus in file order, the held-out ones too, so that the
            M-step's own split (same seed and ``val_fraction``) holds out the same programs as an NTP run on the
            corpus and every arm trains on the same programs.
        bootstrap_batch_size: programs per rollout batch while bootstrapping.
        bootstrap_part_size: programs per atomically written part (the unit of bootstrap resume).
        bootstrap_min_gain: keep a program's annotation only if it beats the plain program's log-likelihood by more
            than this many nats after the thought cost (e.g. ``0``); otherwise the program stays plain. ``null``:
            keep every annotation.
        bootstrap_drop_malformed: remove the kept annotation's malformed thoughts (the E-step's ``thought_format``
            rules, e.g. ``grounded_numbers``) before the M-step sees it.
        mstep_init: start each M-step from the round's ``estep`` policy, or from the ``previous`` round's M-step
            policy (the base model in round 0): then the E-step's updates shape only the annotations.
        mstep_schedule: ``continue``: the rounds' M-steps are one learning-rate schedule ``rounds × mstep_steps``
            long (warm-up once; round k starts where round k-1 ended); ``restart``: each round warms up to the
            peak again (the behaviour before; it re-warms an already-fitted model).
        checkpoint_every_n_steps: Lightning checkpoint interval inside a phase (for resume).
        eval_source: a skill-world split (e.g. ``eval.jsonl``) scored with greedy pass@1 after each round.
        eval_limit: score the first N problems only.
    """

    def __init__(self, rounds: int = 2, estep_steps: int = 50, mstep_steps: int = 100, bootstrap_mode: str = "best",
                 bootstrap_group_size: int | None = None, bootstrap_limit: int | None = None, bootstrap_scope: str = "train",
                 bootstrap_batch_size: int = 16, bootstrap_part_size: int = 64, bootstrap_min_gain: float | None = None,
                 bootstrap_drop_malformed: bool = False, mstep_init: str = "estep", mstep_schedule: str = "continue",
                 checkpoint_every_n_steps: int = 10,
                 eval_source: str | None = None, eval_limit: int | None = None):
        from ra3.errors import Ra3Error

        if rounds < 1:
            raise Ra3Error(f"em.rounds must be >= 1, got {rounds}")
        from ra3.bootstrap import MODES

        if bootstrap_mode not in MODES:
            raise Ra3Error(f"em.bootstrap_mode must be one of {', '.join(MODES)}, got {bootstrap_mode!r}")
        if bootstrap_scope not in ("train", "all"):
            raise Ra3Error(f"em.bootstrap_scope must be 'train' or 'all', got {bootstrap_scope!r}")
        self.bootstrap_scope = bootstrap_scope
        if mstep_init not in ("estep", "previous"):
            raise Ra3Error(f"em.mstep_init must be 'estep' or 'previous', got {mstep_init!r}")
        if mstep_schedule not in ("continue", "restart"):
            raise Ra3Error(f"em.mstep_schedule must be 'continue' or 'restart', got {mstep_schedule!r}")
        self.mstep_schedule = mstep_schedule
        self.rounds, self.estep_steps, self.mstep_steps = rounds, estep_steps, mstep_steps
        self.bootstrap_mode, self.bootstrap_group_size = bootstrap_mode, bootstrap_group_size
        self.bootstrap_limit, self.bootstrap_batch_size = bootstrap_limit, bootstrap_batch_size
        self.bootstrap_part_size, self.bootstrap_min_gain = bootstrap_part_size, bootstrap_min_gain
        self.bootstrap_drop_malformed = bootstrap_drop_malformed
        self.mstep_init, self.checkpoint_every_n_steps = mstep_init, checkpoint_every_n_steps
        self.eval_source, self.eval_limit = eval_source, eval_limit
        self.state = EMState()
        self.out: Path | None = None

    # ---- Lightning hooks (the callback rides along in every phase's Trainer) ------------------------
    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint["em_state"] = asdict(self.state)

    def on_train_start(self, trainer, pl_module) -> None:
        if trainer.logger is not None:
            trainer.logger.log_metrics({"em/round": self.state.round}, step=trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        """Append the E-step's per-step metrics to ``estep_steps.jsonl`` (for plots across rounds)."""
        m = trainer.callback_metrics
        if self.out is None or "estep/reward_mean" not in m or not trainer.is_global_zero:
            return
        keys = ("reward_mean", "thought_rate", "boundary_f1", "expert_nll_with_thoughts", "expert_nll_without_thoughts")
        row = {"round": self.state.round, "step": trainer.global_step,
               **{k: float(m[f"estep/{k}"]) for k in keys if f"estep/{k}" in m}}
        with open(self.out / "estep_steps.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")

    # ---- state -----------------------------------------------------------------------------------
    def _save_state(self) -> None:
        self.state.python_rng = random.getstate()
        self.state.torch_rng = torch.get_rng_state().tolist()
        if _dist()[0] != 0:
            return
        atomic_write_text(self.out / "em_state.json", json.dumps(asdict(self.state), default=list))

    def _load_state(self) -> bool:
        path = self.out / "em_state.json"
        if not path.exists():
            return False
        data = json.loads(path.read_text())
        self.state = EMState(**data)
        if self.state.python_rng is not None:
            v = self.state.python_rng
            random.setstate((v[0], tuple(v[1]), v[2]))
        if self.state.torch_rng is not None:
            torch.set_rng_state(torch.tensor(self.state.torch_rng, dtype=torch.uint8))
        return True

    def _advance(self, phase: str, **updates) -> None:
        for k, v in updates.items():
            setattr(self.state, k, v)
        self.state.phase = phase
        self._save_state()

    # ---- the loop --------------------------------------------------------------------------------
    def run(self, out_dir: str, base_model: str, make_estep: Callable[[str], Any], make_mstep: Callable[[str], Any],
            datamodule, trainer_kwargs: dict, logger=None, resume: bool = False) -> list[dict]:
        """Run (or resume) all rounds; returns the per-round summaries (also in ``em_summary.json``)."""
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        corpus = list(datamodule.train_files)
        if _dist()[0] != 0:  # multi-process: rank 0 owns em_state.json; the others follow what it recorded
            if not self._load_state():
                self.state = EMState(policy=base_model)
        elif resume and self._load_state():
            rank_zero_info(f"ra3 em: resuming round {self.state.round}, phase {self.state.phase}")
        else:
            if (self.out / "em_state.json").exists():
                from ra3.errors import Ra3Error

                raise Ra3Error(f"{self.out} already holds an EM run: pass --resume to continue it, or choose another out_dir")
            self.state = EMState(policy=base_model)
            self._save_state()
        while self.state.round < self.rounds:
            k = self.state.round
            rdir = self.out / f"round_{k}"
            if self.state.phase == "estep":
                t0 = time.time()
                datamodule.use_train_files(corpus)
                module = make_estep(self.state.policy)
                trainer = self._fit(module, datamodule, rdir / "estep", self.estep_steps, trainer_kwargs, logger, manual=True)
                summary = {"round": k, "estep_time_s": time.time() - t0,
                           **{key: float(v) for key, v in trainer.callback_metrics.items() if key.startswith("estep/")}}
                policy = self._export(module, rdir / "estep_policy")
                self._advance("bootstrap", policy=str(policy), summaries=self.state.summaries + [summary])
            if self.state.phase == "bootstrap":
                from ra3.bootstrap import bootstrap

                t0 = time.time()
                # the bootstrap's engine and reward are the E-step's: a fresh E-step module on the exported policy,
                # unsharded on every rank (ranks split the parts), also after a resume into this phase
                module = make_estep(self.state.policy)
                datamodule.use_train_files(corpus)
                datamodule.setup("fit")
                rows = datamodule.train_programs if self.bootstrap_scope == "train" else datamodule.read_programs(corpus)
                rows = rows[: self.bootstrap_limit] if self.bootstrap_limit else rows
                rank, world, joined = _dist()
                if joined or rank == 0:  # ranks split the parts; without a process group yet, rank 0 does all
                    stats = bootstrap(module, rows, rdir, self.bootstrap_mode, self.bootstrap_group_size,
                                      self.bootstrap_batch_size, self.bootstrap_part_size, seed=k,
                                      rank=rank if joined else 0, world_size=world if joined else 1,
                                      min_gain=self.bootstrap_min_gain, drop_malformed=self.bootstrap_drop_malformed)
                else:
                    stats = {}
                self.state.summaries[-1].update({f"bootstrap/{key}": v for key, v in stats.items()},
                                                bootstrap_time_s=time.time() - t0)
                if logger is not None:
                    logger.log_metrics({f"bootstrap/{key}": v for key, v in stats.items() if isinstance(v, (int, float))})
                self._advance("mstep", shards=self.state.shards + [str(rdir / "bootstrapped.jsonl")])
            if self.state.phase == "mstep":
                t0 = time.time()
                datamodule.use_train_files([self.state.shards[-1]])
                previous = base_model if k == 0 else str(self.out / f"round_{k - 1}" / "mstep_policy")
                init = self.state.policy if self.mstep_init == "estep" else previous
                module = make_mstep(init)
                if self.mstep_schedule == "continue":
                    module.hparams.schedule_offset = k * self.mstep_steps
                    module.hparams.schedule_steps = self.rounds * self.mstep_steps
                trainer = self._fit(module, datamodule, rdir / "mstep", self.mstep_steps, trainer_kwargs, logger, manual=False)
                policy = self._export(module, rdir / "mstep_policy")
                summary = self.state.summaries[-1]
                summary.update({key: float(v) for key, v in trainer.callback_metrics.items() if key.startswith(("mstep/", "val/"))},
                               mstep_time_s=time.time() - t0)
                if self.eval_source and _dist()[0] == 0:
                    summary.update(self._evaluate(policy))
                if logger is not None:
                    logger.log_metrics({f"em/{key}": v for key, v in summary.items() if isinstance(v, (int, float))})
                self._advance("estep", policy=str(policy), round=k + 1)
                (self.out / "em_summary.json").write_text(json.dumps(self.state.summaries, indent=1))
        datamodule.use_train_files(corpus)
        self.state.done = True
        self._save_state()
        (self.out / "em_summary.json").write_text(json.dumps(self.state.summaries, indent=1))
        return self.state.summaries

    def _fit(self, module, datamodule, phase_dir: Path, steps: int, trainer_kwargs: dict, logger, manual: bool) -> L.Trainer:
        kwargs = dict(trainer_kwargs)
        if manual:
            kwargs.pop("gradient_clip_val", None)  # the E-step clips its own gradients (manual optimization)
        ckpt = ModelCheckpoint(dirpath=phase_dir / "checkpoints", every_n_train_steps=self.checkpoint_every_n_steps,
                               save_last=True, save_top_k=0)
        trainer = L.Trainer(**kwargs, max_steps=steps, logger=logger if logger is not None else False,
                            callbacks=[self, ckpt], default_root_dir=str(phase_dir), num_sanity_val_steps=0,
                            limit_val_batches=0 if manual else kwargs.get("limit_val_batches", 1.0))
        last = phase_dir / "checkpoints" / "last.ckpt"
        trainer.fit(module, datamodule, ckpt_path=str(last) if last.exists() else None, weights_only=False)
        return trainer

    def _export(self, module, directory: Path) -> Path:
        """``save_pretrained`` into a temp dir renamed over ``directory``; every rank calls it (a sharded
        policy is gathered), rank 0 writes."""
        tmp = directory.with_name(directory.name + ".tmp")
        leader = _dist()[0] == 0
        if leader:
            shutil.rmtree(tmp, ignore_errors=True)
        module.export(tmp)
        if leader:
            shutil.rmtree(directory, ignore_errors=True)
            os.replace(tmp, directory)
        _barrier()
        return directory

    def _evaluate(self, policy: Path) -> dict[str, float]:
        """Greedy pass@1 of the exported ``policy`` (loaded unsharded, on rank 0)."""
        from ra3.datamodules.benchmarks import load_benchmark
        from ra3.evaluation import load_policy, sample_and_score
        from ra3.execution import SandboxPool
        from ra3.rollout.generate import SamplingConfig
        from ra3.rollout.sampler import RaggedEngine

        problems = load_benchmark("skillworld", self.eval_source)[: self.eval_limit]
        with SandboxPool() as pool:
            summary, _, _ = sample_and_score(RaggedEngine(*load_policy(str(policy))), problems, 1,
                                             SamplingConfig(max_new_tokens=200), pool, [1])
        return {"heldout_pass@1": summary.get("pass@1", 0.0)}


# ---- the `ra3 em` command ------------------------------------------------------------------------------
def phase_factory(spec, key: str, base) -> Callable[[str], Any]:
    """``make(policy)`` -> a fresh ``base`` subclass instance (``estep`` or ``mstep`` config ``spec``) that starts from
    the save_pretrained directory ``policy`` (so ``model_config`` and ``tokenizer`` are dropped: the policy has them)."""
    from jsonargparse import ArgumentParser, Namespace

    module_parser = ArgumentParser(exit_on_error=False)
    module_parser.add_subclass_arguments(base, key, required=True)

    def make(policy: str):
        one = spec.clone()
        one.init_args.model, one.init_args.model_config, one.init_args.tokenizer = policy, None, None
        return module_parser.instantiate_classes(Namespace(**{key: one}))[key]

    return make


def parser():
    """The ``ra3 em`` config: shared settings, ``estep``/``mstep`` modules, ``data`` and ``em`` (this callback)."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    from ra3.datamodules.code import CodeDataModule
    from ra3.modules import EStepModule, MStepModule

    p = ArgumentParser(prog="ra3 em", description="RA3 mid-training: EM rounds of E-step, bootstrap and M-step.",
                       exit_on_error=False)
    p.add_argument("-c", "--config", action=ActionConfigFile)
    p.add_argument("--seed_everything", type=int, default=0, help="seed of every phase (data order, sampling)")
    p.add_argument("--out_dir", type=str, default="artifacts/ra3", help="where rounds, shards, policies and state go")
    p.add_argument("--base_model", type=str, required=True, help="the policy to start from (HF name or directory)")
    p.add_argument("--resume", type=bool, default=False, help="continue the EM run recorded in out_dir")
    p.add_argument("--trainer", type=dict, default={}, help="lightning.Trainer arguments shared by every phase")
    p.add_argument("--wandb", type=dict | None, default={"project": "ra3", "offline": True},
                   help="WandbLogger arguments (one run for the whole EM loop); null disables W&B")
    p.add_subclass_arguments(EStepModule, "estep", required=True)
    p.add_subclass_arguments(MStepModule, "mstep", required=True)
    p.add_subclass_arguments(CodeDataModule, "data", required=True)
    p.add_class_arguments(EMCallback, "em")
    return p


def main(args: list[str]) -> None:
    """``ra3 em -c configs/skillworld/ra3.yaml [--resume true]``: parse, build the phases' factories, run the rounds."""
    from jsonargparse import Namespace

    from ra3.errors import Ra3Error
    from ra3.hf import check_exists
    from ra3.modules import EStepModule, MStepModule
    from ra3.strategies import register

    register()
    p = parser()
    try:
        cfg = p.parse_args(args)
    except Exception as e:  # jsonargparse ArgumentError: one line, naming the key
        raise Ra3Error(f"bad ra3 em config: {' '.join(str(e).split())[:400]}") from None
    check_exists(cfg.base_model, "base model")
    EStepModule.check_hparams(**cfg.estep.init_args.as_dict())
    L.seed_everything(cfg.seed_everything)
    init = p.instantiate_classes(Namespace(data=cfg.data, em=cfg.em))
    logger = None
    if cfg.wandb is not None:
        from lightning.pytorch.loggers import WandbLogger

        logger = WandbLogger(**{"save_dir": cfg.out_dir, "name": "em", **cfg.wandb})
        logger.log_hyperparams(cfg.as_dict())
    summaries = init.em.run(cfg.out_dir, cfg.base_model, phase_factory(cfg.estep, "estep", EStepModule),
                            phase_factory(cfg.mstep, "mstep", MStepModule), init.data, cfg.trainer, logger, cfg.resume)
    if logger is not None:
        logger.finalize("success")
        import wandb

        wandb.finish()
    for s in summaries:
        line = ", ".join(f"{k}={v:.4g}" for k, v in s.items() if isinstance(v, float) and k.split("/")[-1] in
                         ("reward_mean", "thought_rate", "boundary_f1", "loss", "heldout_pass@1"))
        print(f"round {s['round']}: {line}")
    print(f"ra3 em: done; final policy {init.em.state.policy}")
