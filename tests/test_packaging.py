"""A wheel installed into a fresh virtual environment works from an empty directory (no checkout, no network)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_installs_and_runs_outside_the_checkout(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(dist), str(ROOT)],
                   check=True, capture_output=True, timeout=300)
    wheel = next(dist.glob("ra3-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    # reuse the installed dependencies: their folders go on sys.path *after* the venv's own, as plain paths, so the
    # checkout's editable-install hook (a .pth there) is not run and ra3 itself comes from the wheel
    import site

    purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], check=True,
                             capture_output=True, text=True).stdout.strip()
    Path(purelib, "_deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--ignore-installed", str(wheel)], check=True,
                   capture_output=True, timeout=300)
    work = tmp_path / "empty"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}

    def ra3(*args):
        r = subprocess.run([str(venv / "bin" / "ra3"), *args], cwd=work, env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        return r.stdout

    where = subprocess.run([str(py), "-c", "import ra3; print(ra3.__file__)"], cwd=work, env=env, capture_output=True,
                           text=True, check=True).stdout.strip()
    assert where.startswith(str(venv)), where  # the wheel's copy, not the checkout's
    assert "skillworld/pretrain" in ra3("config", "list")
    ra3("world", "--out", "w", "--world.n_pretrain", "200", "--world.n_midtrain", "20", "--world.n_rl", "4", "--world.n_eval", "4")
    ra3("fit", "-c", "skillworld/pretrain", "--trainer.max_steps", "2", "--trainer.logger", "false",
        "--trainer.callbacks", "[]", "--trainer.enable_checkpointing", "false", "--trainer.val_check_interval", "2",
        "--model.init_args.tokenizer", "w/tokenizer", "--model.init_args.export_dir", "base",
        "--data.init_args.train_files", '["w/pretrain.jsonl"]', "--data.init_args.batch_size", "2")
    assert json.loads((work / "base" / "config.json").read_text())["model_type"] == "llama"
    out = ra3("evaluate", "--model", "base", "--benchmark", "humaneval", "--limit", "2", "--max_new_tokens", "8",
              "--output_dir", "eval")  # HumanEval ships inside the wheel: no --data_dir, no hub
    assert json.loads((work / "eval" / "results.json").read_text())["humaneval"]["n_tasks"] == 2, out
