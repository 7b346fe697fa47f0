"""``ra3 quickstart``: base vs NTP vs RA3 (vs the oracle) mid-training on the skill world, then RLVR from each.

Every stage is an ordinary ``ra3`` command on a shipped recipe (``ra3/configs/skillworld/``) (plus a small override
file written to ``<out>/configs/``), run as a subprocess; a stage whose ``DONE`` marker exists is skipped, so
re-running after an interruption continues where it stopped. NTP, RA3 and the oracle get the same M-step
token budget (RA3's E-step compute comes on top, as in the paper).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ra3.io import peak_rss_of_stages, write_stage_marker

CONFIGS = Path(__file__).resolve().parent / "configs" / "skillworld"


def skillworld_model_config(**overrides: Any) -> dict[str, Any]:
    """The skill world's model: ``model_config`` of the shipped ``skillworld/pretrain`` recipe, with ``overrides``."""
    recipe = yaml.safe_load((CONFIGS / "pretrain.yaml").read_text())
    return {**recipe["model"]["init_args"]["model_config"], **overrides}


def run_interruptible(cmd: list[str], env: dict) -> int:
    """Run ``cmd`` and return its exit code; a Ctrl-C kills it. SIGINT is blocked while the child is created (and
    unblocked in it before exec): one that lands inside ``Popen`` — right between two stages — would otherwise
    leave the new stage running on, orphaned."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    proc = None
    try:
        proc = subprocess.Popen(cmd, env=env, preexec_fn=lambda: signal.pthread_sigmask(signal.SIG_SETMASK, old))
        signal.pthread_sigmask(signal.SIG_SETMASK, old)  # a Ctrl-C that came meanwhile is raised here: proc exists
        return proc.wait()
    except BaseException:
        if proc is not None:
            proc.kill()
            proc.wait()
        raise
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


@dataclass
class Preset:
    world: dict[str, int]
    pretrain_steps: int
    mstep_budget: int  # M-step steps for NTP / oracle; RA3 splits them over its rounds
    rounds: int
    estep_steps: int
    bootstrap_limit: int | None
    rlvr_steps: int
    eval_limit: int | None
    n_samples: int
    k: list[int]
    batch_size: int = 8
    greedy: bool = True  # also a greedy pass@1 per model


PRESETS = {
    "test": Preset({"n_pretrain": 300, "n_midtrain": 60, "n_rl": 24, "n_eval": 12}, 8, 4, 1, 2, 12, 3, 6, 2, [1, 2], 2, False),
    "tiny": Preset({"n_pretrain": 8000, "n_midtrain": 1200, "n_rl": 400, "n_eval": 200}, 350, 150, 2, 30, 400, 16, 200, 2, [1, 2],
                   greedy=False),
    "small": Preset({"n_pretrain": 16000, "n_midtrain": 4000, "n_rl": 800, "n_eval": 400}, 1200, 400, 3, 80, None, 80, None, 8, [1, 8]),
}


class Quickstart:
    """The quickstart's stages (see the module docstring).

    Args:
        out: the run's folder (re-running with the same folder resumes).
        preset: sizes (``tiny``: the CPU quickstart; ``test``: CI).
        seed: seed of the world, the pre-training and every phase.
    """

    def __init__(self, out: str = "artifacts/quickstart", preset: str = "tiny", seed: int = 0):
        if preset not in PRESETS:
            from ra3.errors import Ra3Error

            raise Ra3Error(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
        self.out, self.p, self.seed = Path(out).resolve(), PRESETS[preset], seed
        self.preset = preset
        self.world = self.out / "world"
        self.times: dict[str, float] = {}
        (self.out / "configs").mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, "WANDB_MODE": os.environ.get("WANDB_MODE", "offline"), "TOKENIZERS_PARALLELISM": "false"}

    # ---- running stages --------------------------------------------------------------------------
    def stage(self, name: str, args: list[str]) -> None:
        marker = self.out / "stages" / f"{name}.done"
        if marker.exists():
            print(f"== {name}: done already, skipped", flush=True)
            return
        print(f"== {name}: ra3 {' '.join(args)}", flush=True)
        t0 = time.time()
        returncode = run_interruptible([sys.executable, "-m", "ra3.cli", *args], env=self.env)
        if returncode != 0:
            from ra3.errors import Ra3Error

            raise Ra3Error(f"quickstart stage '{name}' failed (exit {returncode}); fix it and re-run: finished stages are kept")
        self.times[name] = time.time() - t0
        write_stage_marker(marker, self.times[name])
        print(f"== {name}: {self.times[name]:.0f} s", flush=True)

    def overrides(self, name: str, data: dict[str, Any]) -> str:
        path = self.out / "configs" / f"{name}.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return str(path)

    def _trainer(self, name: str, steps: int, csv: bool = False) -> dict:
        loggers = [{"class_path": "lightning.pytorch.loggers.WandbLogger",
                    "init_args": {"project": "ra3-quickstart", "name": name, "save_dir": str(self.out / "wandb"), "offline": True}}]
        if csv:
            loggers.append({"class_path": "lightning.pytorch.loggers.CSVLogger",
                            "init_args": {"save_dir": str(self.out / "csv"), "name": name, "version": 0}})
        return {"max_steps": steps, "default_root_dir": str(self.out / "runs" / name), "logger": loggers,
                "log_every_n_steps": 1 if csv else min(10, max(1, steps // 10)),
                "enable_progress_bar": True,
                "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                               "init_args": {"dirpath": str(self.out / "runs" / name / "checkpoints"), "save_last": True}}]}

    def fit(self, name: str, config: str, model: dict, data: dict, steps: int, csv: bool = False, val: bool = True) -> None:
        trainer = self._trainer(name, steps, csv)
        if val:
            trainer["val_check_interval"] = steps  # one validation, at the end
        over = {"seed_everything": self.seed, "trainer": trainer, "model": {"init_args": model}, "data": {"init_args": data}}
        self.stage(name, ["fit", "-c", str(CONFIGS / config), "-c", self.overrides(name, over)])

    # ---- the pipeline ----------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        p, w, out = self.p, self.world, self.out
        started = time.time()
        self.stage("world", ["world", "--out", str(w), "--world.seed", str(self.seed)]
                   + [a for k, v in p.world.items() for a in (f"--world.{k}", str(v))])
        self.fit("pretrain", "pretrain.yaml", {"tokenizer": str(w / "tokenizer"), "export_dir": str(out / "base")},
                 {"train_files": [str(w / "pretrain.jsonl")], "batch_size": p.batch_size}, p.pretrain_steps)
        mid = {"batch_size": p.batch_size}
        self.fit("ntp", "ntp.yaml", {"model": str(out / "base"), "export_dir": str(out / "ntp")},
                 {**mid, "train_files": [str(w / "midtrain.jsonl")]}, p.mstep_budget)
        self.fit("oracle", "ntp.yaml", {"model": str(out / "base"), "export_dir": str(out / "oracle")},
                 {**mid, "train_files": [str(w / "midtrain_oracle.jsonl")]}, p.mstep_budget)
        em = {"seed_everything": self.seed, "out_dir": str(out / "ra3"), "base_model": str(out / "base"),
              "wandb": {"project": "ra3-quickstart", "name": "ra3-em", "save_dir": str(out / "wandb"), "offline": True},
              "data": {"init_args": {"train_files": [str(w / "midtrain.jsonl")], "batch_size": p.batch_size}},
              "em": {"rounds": p.rounds, "estep_steps": p.estep_steps, "mstep_steps": p.mstep_budget // p.rounds,
                     "bootstrap_limit": p.bootstrap_limit, "eval_source": str(w / "eval.jsonl"),
                     "eval_limit": p.eval_limit and p.eval_limit // 2}}
        self.stage("ra3", ["em", "-c", str(CONFIGS / "ra3.yaml"), "-c", self.overrides("ra3", em), "--resume", "true"])
        state = json.loads((out / "ra3" / "em_state.json").read_text())
        policies = {"base": out / "base", "ntp": out / "ntp", "ra3": Path(state["policy"]), "oracle": out / "oracle"}
        for name, policy in policies.items():
            self.evaluate(f"eval_{name}", policy)
        for name in ("base", "ntp", "ra3"):
            self.fit(f"rlvr_{name}", "rlvr.yaml", {"init_from": str(policies[name]), "export_dir": str(out / f"rlvr_{name}")},
                     {"rl_files": [str(w / "rl.jsonl")]}, p.rlvr_steps, csv=True, val=False)
            self.evaluate(f"eval_rlvr_{name}", out / f"rlvr_{name}")
        self.times["total"] = time.time() - started
        return self.report()

    def evaluate(self, name: str, policy: Path) -> None:
        p = self.p
        args = ["evaluate", "--model", str(policy), "--benchmark", "skillworld", "--source", f"skillworld={self.world / 'eval.jsonl'}",
                "--output_dir", str(self.out / "eval" / name), "--n_samples", str(p.n_samples), "--temperature", "0.8",
                "--k", *map(str, p.k), "--max_new_tokens", "200", "--batch_size", "128"]
        if p.eval_limit:
            args += ["--limit", str(p.eval_limit)]
        self.stage(name, args)
        if not p.greedy:
            return
        greedy = args[:]
        greedy[greedy.index("--n_samples") + 1], greedy[greedy.index("--temperature") + 1] = "1", "0"
        greedy[greedy.index("--output_dir") + 1] = str(self.out / "eval" / f"{name}_greedy")
        greedy = greedy[: greedy.index("--k")] + ["--k", "1"] + greedy[greedy.index("--max_new_tokens"):]
        self.stage(f"{name}_greedy", greedy)

    # ---- report ------------------------------------------------------------------------------------
    def report(self) -> dict[str, Any]:
        from ra3.report import write_report

        return write_report(self.out, self.preset, peak_rss_mb=peak_rss_of_stages(self.out / "stages"))
