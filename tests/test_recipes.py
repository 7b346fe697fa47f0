"""Every shipped recipe parses (``--print_config``) and instantiates with the model swapped for the tiny one."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REAL = ["qwen2.5-1.5b", "llama-3.2-1b", "llama-3.1-8b"]
FIT_RECIPES = [f"configs/{m}/{k}.yaml" for m in REAL for k in ("ntp", "rlvr")] + [
    "configs/llama-3.1-8b/ntp-lora.yaml", "configs/llama-3.1-8b/rlvr-lora.yaml",
    "configs/skillworld/pretrain.yaml", "configs/skillworld/ntp.yaml", "configs/skillworld/rlvr.yaml"]
EM_RECIPES = [f"configs/{m}/ra3.yaml" for m in REAL] + ["configs/llama-3.1-8b/ra3-lora.yaml", "configs/skillworld/ra3.yaml"]


def ra3(*args, cwd=ROOT):
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "ra3.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("recipe", FIT_RECIPES + EM_RECIPES)
def test_print_config(recipe, capsys, monkeypatch):
    from ra3.cli import main

    monkeypatch.chdir(ROOT)
    sub = "em" if recipe in EM_RECIPES else "fit"
    with pytest.raises(SystemExit) as exit_:
        main([sub, "-c", recipe, "--print_config"])
    assert exit_.value.code in (0, None)
    out = capsys.readouterr().out
    assert "class_path: ra3.em.MStepModule" in out or "class_path: ra3.rlvr.RLVRModule" in out or "estep:" in out
    assert "class_path: ra3.data.CodeDataModule" in out


def test_a_config_with_the_old_class_paths_still_runs(tmp_path, capsys, monkeypatch):
    """Configs written for ra3 <= 0.2 name ``ra3.modules.*`` / ``ra3.datamodules.*``: they keep working."""
    from ra3.cli import main

    old = (ROOT / "configs/skillworld/ntp.yaml").read_text().replace("ra3.em.MStepModule", "ra3.modules.MStepModule")
    old = old.replace("ra3.data.CodeDataModule", "ra3.datamodules.CodeDataModule")
    assert "ra3.modules.MStepModule" in old and "ra3.datamodules.CodeDataModule" in old
    (tmp_path / "old.yaml").write_text(old)
    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "-c", str(tmp_path / "old.yaml"), "--print_config"])
    assert exit_.value.code in (0, None)
    assert "class_path: ra3.modules.MStepModule" in capsys.readouterr().out


@pytest.mark.parametrize("recipe", [r for r in FIT_RECIPES if "skillworld" not in r])
def test_fit_recipe_instantiates_with_the_tiny_model(recipe, tiny_model_dir, world_dir):
    from lightning.pytorch.cli import LightningCLI

    from ra3.data.datamodule import CodeDataModule
    from ra3.policy.module import PolicyModule

    key = "init_from" if "rlvr" in recipe else "model"
    cli = LightningCLI(PolicyModule, CodeDataModule, subclass_mode_model=True, subclass_mode_data=True, run=False,
                       auto_configure_optimizers=False, save_config_callback=None,
                       args=["-c", str(ROOT / recipe), f"--model.init_args.{key}={tiny_model_dir}",
                             "--trainer.accelerator=cpu", "--trainer.precision=32-true", "--trainer.logger=false",
                             f"--data.init_args.{'rl_files' if 'rlvr' in recipe else 'train_files'}=[{world_dir / ('rl.jsonl' if 'rlvr' in recipe else 'midtrain.jsonl')}]"])
    assert cli.model.model.config.hidden_size == 32
    assert cli.model.is_peft == ("lora" in recipe)
    assert cli.trainer.max_steps > 0
