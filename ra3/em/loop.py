"""``run_em``: RA3's EM loop — E-step -> bootstrap -> M-step, for ``rounds`` rounds — with crash-safe resume.

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

This file is the whole EM driver: its settings (``EMSettings``, the config's ``em:`` section), the state
(``EMState``), the phases (``run_em``), the per-phase module factories and the ``ra3 em`` command (``main``: its
parser is the config's schema). ``EMCallback`` (``ra3.em.callback``) only rides along in each phase's Trainer.
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

from ra3.data.io import atomic_write_text
from ra3.em.callback import EMCallback
from ra3.errors import Ra3Error

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
class EMSettings:
    """The EM loop's settings (the ``em:`` section of an ``ra3 em`` config).

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

    rounds: int = 2
    estep_steps: int = 50
    mstep_steps: int = 100
    bootstrap_mode: str = "best"
    bootstrap_group_size: int | None = None
    bootstrap_limit: int | None = None
    bootstrap_scope: str = "train"
    bootstrap_batch_size: int = 16
    bootstrap_part_size: int = 64
    bootstrap_min_gain: float | None = None
    bootstrap_drop_malformed: bool = False
    mstep_init: str = "estep"
    mstep_schedule: str = "continue"
    checkpoint_every_n_steps: int = 10
    eval_source: str | None = None
    eval_limit: int | None = None

    def __post_init__(self):
        from ra3.em.estep import MODES

        if self.rounds < 1:
            raise Ra3Error(f"em.rounds must be >= 1, got {self.rounds}")
        for name, allowed in (("bootstrap_mode", MODES), ("bootstrap_scope", ("train", "all")),
                              ("mstep_init", ("estep", "previous")), ("mstep_schedule", ("continue", "restart"))):
            if getattr(self, name) not in allowed:
                raise Ra3Error(f"em.{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")


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


class _StateFile:
    """``<out>/em_state.json``: written atomically by rank 0 at every phase transition, with the RNG states."""

    def __init__(self, out: Path):
        self.path = out / "em_state.json"

    def save(self, state: EMState) -> None:
        state.python_rng = random.getstate()
        state.torch_rng = torch.get_rng_state().tolist()
        if _dist()[0] == 0:
            atomic_write_text(self.path, json.dumps(asdict(state), default=list))

    def load(self) -> EMState | None:
        """The recorded state (RNG states restored), or ``None`` if there is none."""
        if not self.path.exists():
            return None
        try:
            state = EMState(**json.loads(self.path.read_text()))
        except (ValueError, TypeError) as e:
            raise Ra3Error(f"{self.path} is not an EM state ({type(e).__name__}: {e}); remove it to start over") from None
        if state.phase not in PHASES:
            raise Ra3Error(f"{self.path} records an unknown phase {state.phase!r} (one of {', '.join(PHASES)})")
        if state.python_rng is not None:
            v = state.python_rng
            random.setstate((v[0], tuple(v[1]), v[2]))
        if state.torch_rng is not None:
            torch.set_rng_state(torch.tensor(state.torch_rng, dtype=torch.uint8))
        return state


def connect(datamodule, module) -> None:
    """Hand the phase's datamodule its tokenizer and view (what the module reads: tokens, programs or prompts)."""
    datamodule.connect(tokenizer=module.tokenizer, view=module.data_view)


def run_em(em: EMSettings, out_dir: str, base_model: str, make_estep: Callable[..., Any], make_mstep: Callable[..., Any],
           datamodule, trainer_kwargs: dict, logger=None, resume: bool = False) -> EMState:
    """Run (or resume) all rounds on ``datamodule``; returns the final state (per-round summaries also in
    ``em_summary.json``). ``make_estep(policy)`` / ``make_mstep(policy, **init_args)`` build a phase's module from a
    ``save_pretrained`` directory (``phase_factory``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    file = _StateFile(out)
    corpus = list(datamodule.train_files)
    if _dist()[0] != 0:  # multi-process: rank 0 owns em_state.json; the others follow what it recorded
        state = file.load() or EMState(policy=base_model)
    elif resume and (state := file.load()) is not None:
        rank_zero_info(f"ra3 em: resuming round {state.round}, phase {state.phase}")
    else:
        if file.path.exists():
            raise Ra3Error(f"{out} already holds an EM run: pass --resume to continue it, or choose another out_dir")
        state = EMState(policy=base_model)
        file.save(state)

    def advance(phase: str, **updates) -> None:
        for k, v in updates.items():
            setattr(state, k, v)
        state.phase = phase
        file.save(state)

    while state.round < em.rounds:
        k = state.round
        rdir = out / f"round_{k}"
        if state.phase == "estep":
            t0 = time.time()
            datamodule.use_train_files(corpus)
            module = make_estep(state.policy)
            trainer = _fit(module, datamodule, rdir / "estep", em.estep_steps, trainer_kwargs, logger, state, out, em,
                           manual=True)
            summary = {"round": k, "estep_time_s": time.time() - t0,
                       **{key: float(v) for key, v in trainer.callback_metrics.items() if key.startswith("estep/")}}
            policy = _export(module, rdir / "estep_policy")
            advance("bootstrap", policy=str(policy), summaries=state.summaries + [summary])
        if state.phase == "bootstrap":
            from ra3.em.bootstrap import bootstrap

            t0 = time.time()
            # the bootstrap's engine and reward are the E-step's: a fresh E-step module on the exported policy,
            # unsharded on every rank (ranks split the parts), also after a resume into this phase
            module = make_estep(state.policy)
            datamodule.use_train_files(corpus)
            connect(datamodule, module)
            datamodule.setup("fit")
            rows = datamodule.train_programs if em.bootstrap_scope == "train" else datamodule.read_programs(corpus)
            rows = rows[: em.bootstrap_limit] if em.bootstrap_limit else rows
            rank, world, joined = _dist()
            if joined or rank == 0:  # ranks split the parts; without a process group yet, rank 0 does all
                stats = bootstrap(module, rows, rdir, em.bootstrap_mode, em.bootstrap_group_size,
                                  em.bootstrap_batch_size, em.bootstrap_part_size, seed=k,
                                  rank=rank if joined else 0, world_size=world if joined else 1,
                                  min_gain=em.bootstrap_min_gain, drop_malformed=em.bootstrap_drop_malformed)
            else:
                stats = {}
            state.summaries[-1].update({f"bootstrap/{key}": v for key, v in stats.items()},
                                       bootstrap_time_s=time.time() - t0)
            if logger is not None:
                logger.log_metrics({f"bootstrap/{key}": v for key, v in stats.items() if isinstance(v, (int, float))})
            advance("mstep", shards=state.shards + [str(rdir / "bootstrapped.jsonl")])
        if state.phase == "mstep":
            t0 = time.time()
            datamodule.use_train_files([state.shards[-1]])
            previous = base_model if k == 0 else str(out / f"round_{k - 1}" / "mstep_policy")
            init = state.policy if em.mstep_init == "estep" else previous
            schedule = ({"schedule_offset": k * em.mstep_steps, "schedule_steps": em.rounds * em.mstep_steps}
                        if em.mstep_schedule == "continue" else {})
            module = make_mstep(init, **schedule)
            trainer = _fit(module, datamodule, rdir / "mstep", em.mstep_steps, trainer_kwargs, logger, state, out, em,
                           manual=False)
            policy = _export(module, rdir / "mstep_policy")
            summary = state.summaries[-1]
            summary.update({key: float(v) for key, v in trainer.callback_metrics.items() if key.startswith(("mstep/", "val/"))},
                           mstep_time_s=time.time() - t0)
            if em.eval_source and _dist()[0] == 0:
                summary.update(_evaluate(policy, em.eval_source, em.eval_limit))
            if logger is not None:
                logger.log_metrics({f"em/{key}": v for key, v in summary.items() if isinstance(v, (int, float))})
            advance("estep", policy=str(policy), round=k + 1)
            (out / "em_summary.json").write_text(json.dumps(state.summaries, indent=1))
    datamodule.use_train_files(corpus)
    state.done = True
    file.save(state)
    (out / "em_summary.json").write_text(json.dumps(state.summaries, indent=1))
    return state


def _fit(module, datamodule, phase_dir: Path, steps: int, trainer_kwargs: dict, logger, state: EMState, out: Path,
         em: EMSettings, manual: bool) -> L.Trainer:
    kwargs = dict(trainer_kwargs)
    if manual:
        kwargs.pop("gradient_clip_val", None)  # the E-step clips its own gradients (manual optimization)
    ckpt = ModelCheckpoint(dirpath=phase_dir / "checkpoints", every_n_train_steps=em.checkpoint_every_n_steps,
                           save_last=True, save_top_k=0)
    trainer = L.Trainer(**kwargs, max_steps=steps, logger=logger if logger is not None else False,
                        callbacks=[EMCallback(state, out), ckpt], default_root_dir=str(phase_dir), num_sanity_val_steps=0,
                        limit_val_batches=0 if manual else kwargs.get("limit_val_batches", 1.0))
    last = phase_dir / "checkpoints" / "last.ckpt"
    connect(datamodule, module)
    trainer.fit(module, datamodule, ckpt_path=str(last) if last.exists() else None, weights_only=False)
    return trainer


def _export(module, directory: Path) -> Path:
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


def _evaluate(policy: Path, source: str, limit: int | None) -> dict[str, float]:
    """Greedy pass@1 of the exported ``policy`` (loaded unsharded, on rank 0) on skill-world split ``source``."""
    from ra3.data.benchmarks import load_benchmark
    from ra3.evaluation.passk import load_policy, sample_and_score
    from ra3.execution import SandboxPool
    from ra3.rollout.ragged_engine import RaggedEngine
    from ra3.rollout.sampling import SamplingConfig

    problems = load_benchmark("skillworld", source)[:limit]
    with SandboxPool() as pool:
        summary, _, _ = sample_and_score(RaggedEngine(*load_policy(str(policy))), problems, 1,
                                         SamplingConfig(max_new_tokens=200), pool, [1])
    return {"heldout_pass@1": summary.get("pass@1", 0.0)}


# ---- the `ra3 em` command ------------------------------------------------------------------------------
def phase_factory(spec, key: str, base) -> Callable[..., Any]:
    """``make(policy, **init_args)`` -> a fresh ``base`` subclass instance (``estep`` or ``mstep`` config ``spec``,
    ``init_args`` set on top) that starts from the save_pretrained directory ``policy`` (so ``model_config`` and
    ``tokenizer`` are dropped: the policy has them)."""
    from jsonargparse import ArgumentParser, Namespace

    module_parser = ArgumentParser(exit_on_error=False)
    module_parser.add_subclass_arguments(base, key, required=True)

    def make(policy: str, **init_args):
        one = spec.clone()
        one.init_args.model, one.init_args.model_config, one.init_args.tokenizer = policy, None, None
        for name, value in init_args.items():
            setattr(one.init_args, name, value)
        return module_parser.instantiate_classes(Namespace(**{key: one}))[key]

    return make


def parser():
    """The ``ra3 em`` config: shared settings, ``estep``/``mstep`` modules, ``data`` and ``em`` (``EMSettings``)."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    from ra3.data.datamodule import CodeDataModule
    from ra3.em import EStepModule, MStepModule

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
    p.add_class_arguments(EMSettings, "em")
    return p


def main(args: list[str]) -> None:
    """``ra3 em -c configs/skillworld/ra3.yaml [--resume true]``: parse, build the phases' factories, run the rounds."""
    from jsonargparse import Namespace

    from ra3.em import EStepModule, MStepModule
    from ra3.hf import check_exists
    from ra3.policy.strategies import register

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
    state = run_em(init.em, cfg.out_dir, cfg.base_model, phase_factory(cfg.estep, "estep", EStepModule),
                   phase_factory(cfg.mstep, "mstep", MStepModule), init.data, cfg.trainer, logger, cfg.resume)
    if logger is not None:
        logger.finalize("success")
        import wandb

        wandb.finish()
    for s in state.summaries:
        line = ", ".join(f"{k}={v:.4g}" for k, v in s.items() if isinstance(v, float) and k.split("/")[-1] in
                         ("reward_mean", "thought_rate", "boundary_f1", "loss", "heldout_pass@1"))
        print(f"round {s['round']}: {line}")
    print(f"ra3 em: done; final policy {state.policy}")
