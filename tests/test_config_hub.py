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
    assert cfg["model"]["class_path"] == "ra3.modules.MStepModule" and cfg["trainer"]["max_steps"] == 600
