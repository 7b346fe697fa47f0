"""``ra3 study``: does RA3 mid-training beat NTP, and does RLVR from it converge faster? A paired design over
pre-training seeds.

For each base (a pre-training seed: its own initialisation and data order) the study mid-trains three arms from
that base with the same M-step token budget and learning-rate schedule:

- ``ntp``: next-token prediction on the plain expert programs (the paper's baseline);
- ``oracle``: the same on the programs with the world's ground-truth thoughts (the positive control: RA3 can
  only help where this helps);
- ``ra3``: the E-step from the base, bootstrap of every program, and the M-step from the base on the
  bootstrapped programs (one EM round by default: NTP's budget and schedule; ``rounds`` etc. are options);

then RLVR (GRPO, unit-test reward) from each on the RL split (held-out compositions A), and evaluates every model
on ``eval.jsonl`` (new instances of A, and compositions B seen nowhere). Every stage is an ordinary ``ra3``
command with an override file in ``<out>/configs``, logged to ``<out>/logs/<stage>.log``; a stage whose
``stages/<stage>.done`` exists is skipped, so a re-run resumes. Independent stages run in parallel processes
with one thread each (``jobs`` lanes; a study of one base pre-trains it on every lane). ``results.json``, ``report.md`` and plots come from :mod:`ra3.experiments.report`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from ra3.errors import Ra3Error
from ra3.data.io import write_stage_marker
from ra3.data.skillworld import RECIPES

ARMS = ("ntp", "oracle", "ra3")
# diagnostic arms (``arms=[ntp, oracle, ra3, ra3_corrected, oracle_noisy]``; not methods): the M-step on RA3's
# corpus with its wrong thoughts corrected, and on the oracle corpus with RA3's wrong thoughts (ra3.experiments.diagnostics)
DIAGNOSTIC_ARMS = {"ra3_corrected": "corrected", "oracle_noisy": "noisy_oracle"}


@dataclass
class StudyPreset:
    """Sizes of one study. ``world``: ``WorldConfig`` fields; steps are optimizer steps of batch ``batch_size``."""

    bases: int
    world: dict[str, Any]
    pretrain_steps: int
    mstep_steps: int
    estep_steps: int
    rlvr_steps: int
    n_samples: int
    learning_rates: dict[str, float] = field(default_factory=lambda: {"ntp": 1e-3, "oracle": 1e-3, "ra3": 1e-3})
    lr_grid: list[float] = field(default_factory=list)  # also run every arm at these M-step LRs (the pilot's choice)
    rounds: int = 1
    rlvr_lr: float = 1e-4
    rlvr_beta: float = 0.0  # weight of RLVR's KL to its start policy
    rlvr_settings: dict[str, Any] = field(default_factory=dict)  # more RLVRModule arguments (warmup_steps, loss_type, ...)
    rlvr_eval_points: int = 2  # RLVR checkpoints scored, evenly spaced, the last one the final policy
    em_settings: dict[str, Any] = field(default_factory=dict)  # more ``ra3 em`` settings of the RA3 arm (EMSettings)
    estep_settings: dict[str, Any] = field(default_factory=dict)  # more EStepModule arguments of the RA3 arm
    rlvr_prompts: int = 8
    batch_size: int = 8
    k: list[int] = field(default_factory=lambda: [1])
    eval_limit: int | None = None
    jobs: int = 2
    arms: tuple[str, ...] = ("ntp", "oracle", "ra3")
    rlvr: bool = True  # RLVR from every arm (else: mid-training only, plus NTP's pass rate on the RL split)
    eval_split: str = "eval.jsonl"  # the pilot scores on val.jsonl: choices are never made on the evaluation sets
    mid_rlvr_eval: tuple[str, ...] | None = None  # arms whose mid-RLVR checkpoints are evaluated (None: every arm)
    wandb: bool = False  # also log every training stage to W&B (<out>/wandb; offline unless WANDB_MODE says otherwise)


_WORLD = {"style": "macro", "comment_style": "routine", "split": "composition", "min_chain": 2, "max_chain": 6,
          "surfaces": 3, "comment_fraction": 0.5, "n_pretrain": 8000, "n_midtrain": 1200, "n_rl": 400, "n_eval": 200,
          "n_val": 200, "rl_clauses": [3, 4]}

PRESETS = {
    "test": StudyPreset(2, {**_WORLD, "n_pretrain": 300, "n_midtrain": 60, "n_rl": 24, "n_eval": 12, "n_val": 8},
                        pretrain_steps=6, mstep_steps=4, estep_steps=2, rlvr_steps=4, n_samples=2, k=[1, 2],
                        batch_size=2, rlvr_prompts=2, mid_rlvr_eval=("ra3",)),
    # the pilot picks each arm's M-step LR on val.jsonl (base 100: `--first_seed 100`), never on eval.jsonl; one base
    # (its pre-training on every lane) keeps it under 20 min; `--bases 2` for a firmer choice (27.6 min)
    "pilot": StudyPreset(1, _WORLD, pretrain_steps=700, mstep_steps=150, estep_steps=30, rlvr_steps=16, n_samples=2,
                         k=[1, 2], rlvr=False, eval_split="val.jsonl", lr_grid=[1e-3, 3e-3]),
    # learning rates: the pilot's choices (docs/study.md, "Choosing the world and the learning rates")
    # RLVR: benchmarks/rlvr_probe.py's choice on the pilot's bases (docs/ra3-diagnosis.md): lr 3e-5, 80 steps
    # RA3: the skill-world recipe's E-step (thought_retries 8, grounded_numbers, bootstrap_drop_malformed): ra3_probe.py's choice
    # ra3 quickstart: one base of the default study, a shorter RLVR; <= 15 min on 2 cores
    "quickstart": StudyPreset(1, _WORLD, pretrain_steps=700, mstep_steps=150, estep_steps=30, rlvr_steps=40, n_samples=4,
                              k=[1, 2], rlvr_lr=3e-5, rlvr_eval_points=2, wandb=True),
    "default": StudyPreset(5, _WORLD, pretrain_steps=700, mstep_steps=150, estep_steps=30, rlvr_steps=80, n_samples=4,
                           k=[1, 2], learning_rates={"ntp": 1e-3, "oracle": 1e-3, "ra3": 1e-3}, rlvr_lr=3e-5,
                           rlvr_eval_points=3),
}


def checkpoint_steps(steps: int, points: int) -> list[int]:
    """Steps of the ``points`` - 1 evenly spaced checkpoints scored before the final policy of a ``steps``-step run."""
    every = max(1, steps // max(1, points))
    return [k * every for k in range(1, points) if k * every < steps]


def check_settings(p: StudyPreset) -> None:
    """One clear error for a key of ``rlvr_settings`` / ``estep_settings`` / ``em_settings`` that is not an argument
    of RLVRModule / EStepModule / EMSettings, or that the study sets itself. (Imports the modules only when there is
    something to check: a study's own process stays light.)"""
    if not (p.rlvr_settings or p.estep_settings or p.em_settings):
        return
    import inspect

    from ra3.em.estep import EStepModule
    from ra3.em.loop import EMSettings
    from ra3.policy.module import PolicyModule
    from ra3.rlvr.module import RLVRModule

    def args(*classes) -> set[str]:
        return {n for c in classes for n in inspect.signature(c.__init__).parameters} - {"self", "args", "kwargs"}

    for group, classes, own, hint in (
            ("rlvr", (RLVRModule, PolicyModule), {"init_from", "model", "export_dir", "learning_rate", "beta"},
             "use rlvr_lr / rlvr_beta for the LR and KL weight"),
            ("estep", (EStepModule, PolicyModule), {"model", "init_seed"}, ""),
            ("em", (EMSettings,), {"rounds", "estep_steps", "mstep_steps"}, "use rounds / estep_steps / mstep_steps")):
        allowed = args(*classes)
        for key in getattr(p, f"{group}_settings"):
            if key in own:
                raise Ra3Error(f"{group} setting {key!r} is set by the study" + (f" ({hint})" if hint else ""))
            if key not in allowed:
                raise Ra3Error(f"unknown {group} setting {key!r}: not an argument of {classes[0].__name__} "
                               f"({', '.join(sorted(allowed - own))})")


def _terminate(signum, frame):
    raise SystemExit(128 + signum)


@dataclass
class Stage:
    name: str
    args: list[str]
    deps: list[str] = field(default_factory=list)
    threads: int = 1  # lanes (of ``jobs``) it occupies: its torch threads


class Study:
    """Builds the stage graph of a study and runs it (see the module docstring).

    Args:
        out: the study's folder (re-running with the same folder resumes).
        preset: sizes: ``default`` (5 bases), ``pilot`` (chooses learning rates on val.jsonl) or ``test`` (CI).
        bases: number of pre-training seeds (default: the preset's).
        jobs: lanes: stages run in parallel, one thread each (a lone base's pre-training takes every lane; default:
            the preset's).
        first_seed: bases are seeds first_seed, first_seed + 1, ...
        world: WorldConfig overrides, e.g. surfaces=1.
        settings: preset overrides (YAML values), e.g. rlvr_steps=40 'lr_grid=[3e-4, 3e-3]'.
    """

    def __init__(self, out: str = "artifacts/study", preset: str = "default", bases: int | None = None, jobs: int | None = None,
                 first_seed: int = 0, world: dict[str, Any] | None = None, settings: dict[str, Any] | None = None):
        if preset not in PRESETS:
            raise Ra3Error(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
        settings = dict(settings or {})
        prefixed = {group: {k.split(".", 1)[1]: settings.pop(k) for k in list(settings) if k.startswith(group + ".")}
                    for group in ("rlvr", "em", "estep")}
        known = {f.name for f in fields(StudyPreset)} - {"world", "bases"}
        for key in settings:
            if key not in known:
                raise Ra3Error(f"unknown study setting {key!r}; known: {', '.join(sorted(known))}, or rlvr.ARG / "
                               "estep.ARG / em.ARG (an argument of RLVRModule, EStepModule, EMSettings)")
        self.preset, self.p = preset, replace(PRESETS[preset], **settings)
        for group, values in prefixed.items():
            setattr(self.p, f"{group}_settings", {**getattr(self.p, f"{group}_settings"), **values})
        check_settings(self.p)
        self.out = Path(out).resolve()
        self.bases = [first_seed + i for i in range(self.p.bases if bases is None else bases)]
        unknown = set(self.p.arms) - set(ARMS) - set(DIAGNOSTIC_ARMS)
        if unknown:
            raise Ra3Error(f"unknown arm(s) {', '.join(sorted(unknown))}; arms are {', '.join(ARMS)} and the diagnostics "
                           f"{', '.join(DIAGNOSTIC_ARMS)}")
        if set(self.p.arms) & set(DIAGNOSTIC_ARMS) and not {"ra3", "oracle"} <= set(self.p.arms):
            raise Ra3Error("the diagnostic arms are built from RA3's bootstrapped corpus and compared with the oracle: "
                           "arms must include ra3 and oracle")
        if self.p.lr_grid and self.p.rounds != 1:
            raise Ra3Error("lr_grid needs rounds 1 (RA3's other learning rates reuse its one bootstrapped corpus)")
        if len(self.bases) < 1:
            raise Ra3Error("a study needs at least 1 base (and 2 for confidence intervals over bases)")
        self.jobs = jobs or self.p.jobs
        self.world_config = {**self.p.world, **(world or {})}
        self.world = self.out / "world"
        self.env = {**os.environ, "WANDB_MODE": os.environ.get("WANDB_MODE", "offline"), "TOKENIZERS_PARALLELISM": "false"}
        self.stages: dict[str, Stage] = {}
        self.times: dict[str, float] = {}
        self._procs: dict[str, subprocess.Popen] = {}  # running stages' processes (killed if the study is stopped)
        self._stopping = False
        self._lock = threading.Condition()
        (self.out / "configs").mkdir(parents=True, exist_ok=True)

    # ---- building the graph ------------------------------------------------------------------------
    def add(self, name: str, args: list[str], deps: list[str] = (), threads: int = 1) -> str:
        self.stages[name] = Stage(name, args, list(deps), threads)
        return name

    def overrides(self, name: str, data: dict[str, Any]) -> str:
        path = self.out / "configs" / f"{name}.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return str(path)

    def fit(self, name: str, config: str, seed: int, model: dict, data: dict, steps: int, deps: list[str],
            csv: bool = False, val: bool = True, checkpoint_every: int | None = None, threads: int = 1) -> str:
        run = self.out / "runs" / name
        loggers = [{"class_path": "lightning.pytorch.loggers.CSVLogger",
                    "init_args": {"save_dir": str(self.out / "csv"), "name": name, "version": 0}}] if csv else []
        if self.p.wandb:
            loggers.append({"class_path": "lightning.pytorch.loggers.WandbLogger", "init_args": self.wandb(name)})
        callbacks = [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                      "init_args": {"dirpath": str(run / "checkpoints"), "save_last": False, "save_top_k": -1,
                                    "every_n_train_steps": checkpoint_every, "filename": "{step}"}}] if checkpoint_every else []
        trainer = {"max_steps": steps, "default_root_dir": str(run), "logger": loggers or False,
                   "log_every_n_steps": 1 if csv else max(1, min(10, steps // 10)), "enable_progress_bar": False,
                   "enable_checkpointing": bool(callbacks), "callbacks": callbacks}
        if val:
            trainer["val_check_interval"] = steps
        over = {"seed_everything": seed, "trainer": trainer, "model": {"init_args": model}, "data": {"init_args": data}}
        return self.add(name, ["fit", "-c", str(RECIPES / config), "-c", self.overrides(name, over)], deps, threads)

    def wandb(self, name: str) -> dict[str, str]:
        return {"project": "ra3-study", "name": name, "save_dir": str(self.out / "wandb")}

    def mstep(self, name: str, seed: int, base: Path, export: Path, corpus: Path, lr: float, deps: list[str]) -> str:
        """NTP (the M-step) from ``base`` on ``corpus`` with the preset's budget and the common LR schedule."""
        return self.fit(name, "ntp.yaml", seed, {"model": str(base), "learning_rate": lr, "export_dir": str(export)},
                        {"train_files": [str(corpus)], "batch_size": self.p.batch_size, "seed": seed}, self.p.mstep_steps, deps)

    def evaluate(self, name: str, model: Path | str, deps: list[str], source: str | None = None) -> str:
        p = self.p
        source = source or p.eval_split
        args = ["evaluate", "--model", str(model), "--benchmark", "skillworld", "--source", f"skillworld={self.world / source}",
                "--output_dir", str(self.out / "eval" / name), "--n_samples", str(p.n_samples), "--temperature", "0.8",
                "--k", *map(str, p.k), "--max_new_tokens", "200", "--batch_size", "64", "--workers", "1"]
        if p.eval_limit:
            args += ["--limit", str(p.eval_limit)]
        return self.add(name, args, deps)

    def build(self) -> None:
        p, w, out = self.p, self.world, self.out
        every = self.rlvr_checkpoint_steps()
        world = self.add("world", ["world", "--out", str(w)] + [a for k, v in self.world_config.items()
                                                  for a in (f"--world.{k}", json.dumps(v, separators=(",", ":")) if isinstance(v, (list, dict)) else str(v))])
        for s in self.bases:
            b = f"b{s}"
            base = out / b / "base"
            pre = self.fit(f"{b}_pretrain", "pretrain.yaml", s,
                           {"tokenizer": str(w / "tokenizer"), "export_dir": str(base), "init_seed": s},
                           {"train_files": [str(w / "pretrain.jsonl")], "batch_size": p.batch_size, "seed": s},
                           p.pretrain_steps, [world], threads=max(1, self.jobs // len(self.bases)))
            self.evaluate(f"{b}_eval_base", base, [pre])
            policies = {arm: out / b / arm for arm in ("ntp", "oracle")}
            corpora = {"ntp": w / "midtrain.jsonl", "oracle": w / "midtrain_oracle.jsonl"}
            for arm in ("ntp", "oracle"):
                if arm in p.arms:
                    self.mstep(f"{b}_{arm}", s, base, policies[arm], corpora[arm], p.learning_rates[arm], [pre])
            em = {"seed_everything": s, "out_dir": str(out / b / "ra3"), "base_model": str(base),
                  "wandb": self.wandb(f"{b}_ra3") if p.wandb else None,
                  "trainer": {"enable_progress_bar": False},
                  "estep": {"init_args": {**p.estep_settings, "init_seed": s}},
                  "mstep": {"init_args": {"learning_rate": p.learning_rates["ra3"]}},
                  "data": {"init_args": {"train_files": [str(w / "midtrain.jsonl")], "batch_size": p.batch_size, "seed": s,
                                         "val_fraction": 0.05, "packing": True}},
                  "em": {"rounds": p.rounds, "estep_steps": p.estep_steps, "mstep_steps": p.mstep_steps // p.rounds,
                         "bootstrap_limit": None, "mstep_init": "previous", "mstep_schedule": "continue", "eval_source": None,
                         **p.em_settings}}
            if "ra3" in p.arms:
                self.add(f"{b}_ra3", ["em", "-c", str(RECIPES / "ra3.yaml"), "-c", self.overrides(f"{b}_ra3", em), "--resume", "true"], [pre])
                corpora["ra3"] = out / b / "ra3" / "round_0" / "bootstrapped.jsonl"
            policies["ra3"] = out / b / "ra3" / f"round_{p.rounds - 1}" / "mstep_policy"
            for arm, kind in DIAGNOSTIC_ARMS.items():  # the M-step from the base on a diagnostic corpus (see ra3.experiments.diagnostics)
                if arm in p.arms:
                    corpora[arm] = out / b / f"{arm}.jsonl"
                    policies[arm] = out / b / arm
                    build = self.add(f"{b}_corpus_{arm}", ["diagnostic_corpus", kind, "--bootstrapped", str(corpora["ra3"]),
                                                           "--oracle", str(corpora["oracle"]), "--out", str(corpora[arm])], [f"{b}_ra3"])
                    self.mstep(f"{b}_{arm}", s, base, policies[arm], corpora[arm], p.learning_rates.get(arm, p.learning_rates["oracle"]),
                               [pre, build])
            for lr in p.lr_grid:  # one round from the base: RA3's M-step is NTP's on the bootstrapped corpus
                for arm in (a for a in p.arms if a in ARMS):
                    if lr != p.learning_rates[arm]:
                        name = f"{b}_{arm}_lr{lr:g}"
                        self.mstep(name, s, base, out / b / f"{arm}_lr{lr:g}", corpora[arm], lr, [pre, f"{b}_{arm}"])
                        self.evaluate(f"{b}_eval_{arm}_lr{lr:g}", out / b / f"{arm}_lr{lr:g}", [name])
            for arm in p.arms:
                self.evaluate(f"{b}_eval_{arm}", policies[arm], [f"{b}_{arm}"])
                if arm in DIAGNOSTIC_ARMS:
                    continue
                if not p.rlvr:
                    if arm == "ntp":
                        self.evaluate(f"{b}_rlsplit_ntp", policies[arm], [f"{b}_{arm}"], "rl.jsonl")
                    continue
                rl = self.fit(f"{b}_rlvr_{arm}", "rlvr.yaml", s,
                              {**p.rlvr_settings, "init_from": str(policies[arm]), "export_dir": str(out / b / f"rlvr_{arm}"),
                               "learning_rate": p.rlvr_lr, "beta": p.rlvr_beta},
                              {"rl_files": [str(w / "rl.jsonl")], "program_batch_size": p.rlvr_prompts, "seed": s},
                              p.rlvr_steps, [f"{b}_{arm}"], csv=True, val=False, checkpoint_every=every[0] if every else None)
                if p.mid_rlvr_eval is None or arm in p.mid_rlvr_eval:
                    for step in every:
                        self.evaluate(f"{b}_eval_rlvr_step{step}_{arm}", out / "runs" / rl / "checkpoints" / f"step={step}.ckpt", [rl])
                self.evaluate(f"{b}_eval_rlvr_{arm}", out / b / f"rlvr_{arm}", [rl])

    def rlvr_checkpoint_steps(self) -> list[int]:
        """Steps of the RLVR checkpoints scored before the final policy (``checkpoint_steps``)."""
        return checkpoint_steps(self.p.rlvr_steps, self.p.rlvr_eval_points)

    # ---- running -----------------------------------------------------------------------------------
    def _marker(self, name: str) -> Path:
        return self.out / "stages" / f"{name}.done"

    def _run_stage(self, stage: Stage) -> int:
        log = self.out / "logs" / f"{stage.name}.log"
        log.parent.mkdir(exist_ok=True)
        t0 = time.time()
        with open(log, "w") as f:
            f.write(f"ra3 {' '.join(stage.args)}\n")
            f.flush()
            threads = str(stage.threads)
            proc = subprocess.Popen([sys.executable, "-m", "ra3.cli", *stage.args], stdout=f, stderr=subprocess.STDOUT,
                                    env={**self.env, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads})
            with self._lock:
                self._procs[stage.name] = proc
                if self._stopping:  # the study was stopped while this stage's process was being created
                    proc.kill()
            code = proc.wait()
            with self._lock:
                self._procs.pop(stage.name, None)
        if code == 0:
            self.times[stage.name] = time.time() - t0
            write_stage_marker(self._marker(stage.name), self.times[stage.name])
        return code

    def critical_path(self) -> dict[str, int]:
        """Stage -> the most stages on any chain from it to the end (itself included). Ready stages start longest
        chain first (a pre-training, then what waits on it), so the last base's pipeline does not run alone at
        the end."""
        children: dict[str, list[str]] = {n: [] for n in self.stages}
        for n, st in self.stages.items():
            for d in st.deps:
                children[d].append(n)
        depth: dict[str, int] = {}

        def walk(n: str) -> int:
            if n not in depth:
                depth[n] = 1 + max((walk(c) for c in children[n]), default=0)
            return depth[n]

        return {n: walk(n) for n in self.stages}

    def plan(self) -> list[str]:
        """One line per stage in run order: done or to run, its dependencies, and the ``ra3`` command it runs."""
        self.build()
        return [f"{'done' if self._marker(n).exists() else 'todo'}  {n}  <- {','.join(st.deps) or '-'}\n    ra3 {' '.join(st.args)}"
                for n, st in self.stages.items()]

    def run(self) -> dict[str, Any]:
        """Run every stage not done yet, ``jobs`` at a time in dependency order; then write the report."""
        started = time.time()
        self._stopping = False
        self.build()
        done = {n for n in self.stages if self._marker(n).exists()}
        pending = [n for n in self.stages if n not in done]
        total, failed, running = len(self.stages), [], {}
        weight = self.critical_path()
        lock = self._lock
        print(f"ra3 study: {len(done)}/{total} stages done already; {len(pending)} to run, {self.jobs} at a time "
              f"(logs in {self.out / 'logs'})", flush=True)

        def work(name: str) -> None:
            code = self._run_stage(self.stages[name])
            with lock:
                running.pop(name)
                if code == 0:
                    done.add(name)
                    print(f"[{len(done)}/{total}] {name}: {self.times[name]:.0f} s", flush=True)
                else:
                    failed.append(f"{name} (exit {code}; see {self.out / 'logs' / (name + '.log')})")
                lock.notify_all()

        on_term = None
        if threading.current_thread() is threading.main_thread():  # SIGTERM stops the stages too, as Ctrl-C does
            on_term = signal.signal(signal.SIGTERM, _terminate)
        try:
            self._run_lanes(pending, done, failed, running, weight, work)
        except BaseException:
            with lock:  # a stopped study leaves no stage running: an orphan would race its re-run on the same files
                self._stopping = True
                for proc in self._procs.values():
                    proc.kill()
                threads = list(running.values())
            for thread in threads:
                thread.join(timeout=60)
            raise
        finally:
            if on_term is not None:
                signal.signal(signal.SIGTERM, on_term)
        if failed:
            raise Ra3Error(f"study stage failed: {failed[0]}; fix it and re-run: finished stages are kept")
        from ra3.experiments.report import write_report

        return write_report(self, wall_s=time.time() - started)

    def _run_lanes(self, pending: list[str], done: set[str], failed: list[str], running: dict, weight: dict[str, int],
                   work) -> None:
        """Start ready stages (longest chain first) while lanes are free, until every stage ran or one failed."""
        lock = self._lock
        with lock:
            while pending and not failed:
                ready = sorted((n for n in pending if all(d in done for d in self.stages[n].deps)), key=lambda n: -weight[n])
                while ready and (not running or sum(self.stages[n].threads for n in running)
                                 + self.stages[ready[0]].threads <= self.jobs):
                    name = ready.pop(0)
                    pending.remove(name)
                    print(f"  {name}: started", flush=True)
                    running[name] = threading.Thread(target=work, args=(name,), daemon=True)
                    running[name].start()
                if not running:
                    break
                lock.wait()
            while running:
                lock.wait()
