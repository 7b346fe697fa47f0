"""Shipped recipes live in the package: listed, shown, copied, and found by name from any directory."""

import os
import subprocess
import sys
from pathlib import Path

import yaml


def ra3(*args, cwd):
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "ra3.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_config_list_show_copy(tmp_path):
    import ra3 as package

    listed = ra3("config", "list", cwd=tmp_path).stdout.split()
    assert {"skillworld/pretrain", "skillworld/ntp", "skillworld/ra3", "skillworld/rlvr", "qwen2.5-1.5b/ra3"} <= set(listed)
    shipped = Path(package.__file__).parent / "configs" / "skillworld" / "ntp.yaml"
    assert ra3("config", "show", "skillworld/ntp", cwd=tmp_path).stdout == shipped.read_text()
    out = ra3("config", "copy", "skillworld/ntp", str(tmp_path), cwd=tmp_path)
    assert out.returncode == 0 and (tmp_path / "ntp.yaml").read_text() == shipped.read_text()
    again = ra3("config", "copy", "skillworld/ntp", str(tmp_path), cwd=tmp_path)
    assert again.returncode == 2 and "exists already" in again.stderr.strip().splitlines()[-1]
    missing = ra3("config", "show", "skillworld/nope", cwd=tmp_path)
    assert missing.returncode == 2 and "no recipe named 'skillworld/nope'" in missing.stderr


def test_a_recipe_by_name_from_an_empty_directory(tmp_path):
    """``-c skillworld/pretrain`` (no such file here) resolves to the shipped recipe."""
    out = ra3("fit", "-c", "skillworld/pretrain", "--print_config", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    cfg = yaml.safe_load(out.stdout)
    assert cfg["model"]["class_path"] == "ra3.em.MStepModule" and cfg["trainer"]["max_steps"] == 600


def _mstep_budget(path: Path) -> dict:
    """An M-step recipe's budget and schedule: tokens per run (optimizer steps × rows × accumulation × length), peak
    LR, warm-up, final LR ratio, devices, precision; for ``ra3 em`` recipes the rounds' M-steps together (their
    schedule is one curve, ``mstep_schedule: continue``)."""
    from ra3.policy.module import PolicyModule
    import inspect

    c = yaml.safe_load(path.read_text())
    trainer, data = c.get("trainer") or {}, c["data"]["init_args"]
    module = (c["mstep"] if "em" in c else c["model"])["init_args"]
    defaults = {k: p.default for k, p in inspect.signature(PolicyModule.__init__).parameters.items()}
    if "em" in c:
        em = c["em"]
        assert em.get("mstep_schedule", "continue") == "continue", path
        steps = em.get("rounds", 2) * em["mstep_steps"]
    else:
        steps = trainer["max_steps"]
    accumulate = trainer.get("accumulate_grad_batches", 1)
    return {"tokens": steps * data["batch_size"] * accumulate * data.get("max_length", 512), "steps": steps,
            "learning_rate": float(module.get("learning_rate", defaults["learning_rate"])),
            "warmup_steps": module.get("warmup_steps", defaults["warmup_steps"]),
            "min_lr_ratio": module.get("min_lr_ratio", defaults["min_lr_ratio"]),
            "devices": trainer.get("devices"), "precision": trainer.get("precision"), "peft": module.get("peft")}


def test_every_ntp_and_ra3_recipe_pair_has_the_same_mstep_budget_and_schedule():
    """A user comparing NTP with RA3 from the hub recipes compares equal M-step token budgets, LRs and schedules."""
    import ra3 as package

    hub = Path(package.__file__).parent / "configs"
    pairs = [(d / f"ntp{s}.yaml", d / f"ra3{s}.yaml") for d in sorted(hub.iterdir()) if d.name != "skillworld"
             for s in ("", "-lora") if (d / f"ntp{s}.yaml").exists()]
    assert len(pairs) == 4  # qwen2.5-1.5b, llama-3.2-1b, llama-3.1-8b full and LoRA
    for ntp, ra3_ in pairs:
        assert _mstep_budget(ntp) == _mstep_budget(ra3_), (ntp, ra3_)
        assert (ra3_.parent / ntp.name.replace("ntp", "ra3")).exists()
