"""A wheel installed into a fresh virtual environment works from an empty directory (no checkout, no network).

``tests/experiments/test_quickstart.py`` runs the whole ``ra3 quickstart --preset test`` from the same installed wheel.
"""

import json
import subprocess

import pytest


@pytest.mark.slow
def test_wheel_finds_its_recipes_and_benchmarks_outside_the_checkout(installed_wheel, tmp_path):
    w = installed_wheel

    def ra3(*args):
        r = subprocess.run([str(w.ra3), *args], cwd=tmp_path, env=w.env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        return r.stdout

    where = subprocess.run([str(w.python), "-c", "import ra3; print(ra3.__file__)"], cwd=tmp_path, env=w.env,
                           capture_output=True, text=True, check=True).stdout.strip()
    assert where.startswith(str(w.venv)), where  # the wheel's copy, not the checkout's
    assert "skillworld/pretrain" in ra3("config", "list")
    ra3("config", "copy", "skillworld/ra3", "mine.yaml")
    assert "estep:" in (tmp_path / "mine.yaml").read_text()
    # every recipe the study's stages name exists inside the installed package
    plan = ra3("study", "--preset", "test", "--out", "s", "--dry_run")
    recipes = {a for line in plan.splitlines() for a in line.split() if a.endswith(".yaml") and "/configs/skillworld/" in a}
    assert recipes and all(r.startswith(str(w.venv)) for r in recipes), recipes
    assert all(__import__("pathlib").Path(r).exists() for r in recipes)
    ra3("world", "--out", "w", "--world.n_pretrain", "200", "--world.n_midtrain", "20", "--world.n_rl", "4", "--world.n_eval", "4")
    ra3("fit", "-c", "skillworld/pretrain", "--trainer.max_steps", "1", "--trainer.logger", "false",
        "--trainer.callbacks", "[]", "--trainer.enable_checkpointing", "false", "--trainer.val_check_interval", "1",
        "--model.init_args.tokenizer", "w/tokenizer", "--model.init_args.export_dir", "base",
        "--data.init_args.train_files", '["w/pretrain.jsonl"]', "--data.init_args.batch_size", "2")
    out = ra3("evaluate", "--model", "base", "--benchmark", "humaneval", "--limit", "2", "--max_new_tokens", "8",
              "--output_dir", "eval")  # HumanEval ships inside the wheel: no --data_dir, no hub
    assert json.loads((tmp_path / "eval" / "results.json").read_text())["humaneval"]["n_tasks"] == 2, out


def test_the_version_is_the_same_in_pyproject_the_package_and_the_changelog():
    import re
    import tomllib
    from pathlib import Path

    import ra3

    root = Path(__file__).resolve().parents[1]
    version = tomllib.loads((root / "pyproject.toml").read_text())["project"]["version"]
    latest = re.search(r"^## (\S+)", (root / "CHANGELOG.md").read_text(), re.MULTILINE).group(1)
    assert version == ra3.__version__ == latest
