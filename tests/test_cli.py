"""The ``ra3`` command end to end, each call a real subprocess."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SMALL_WORLD = ["--world.n_pretrain", "300", "--world.n_midtrain", "100", "--world.n_rl", "20", "--world.n_eval", "20"]


def ra3(*args, cwd, timeout=300):
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "ra3.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """``ra3 world`` then ``ra3 fit -c configs/skillworld/pretrain.yaml`` for a few steps, in a fresh folder."""
    cwd = tmp_path_factory.mktemp("cli")
    world = ra3("world", "--out", "artifacts/skillworld", *SMALL_WORLD, cwd=cwd)
    assert world.returncode == 0, world.stderr
    fit = ra3("fit", "-c", str(ROOT / "configs/skillworld/pretrain.yaml"), "--trainer.max_steps=3",
              "--trainer.val_check_interval=3", "--data.init_args.batch_size=2", cwd=cwd)
    assert fit.returncode == 0, fit.stderr[-3000:]
    return cwd


@pytest.mark.slow
def test_fit_from_the_cli_exports_a_transformers_model_and_saves_the_config(pretrained):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = pretrained / "artifacts/skillworld/base"
    model = AutoModelForCausalLM.from_pretrained(base)
    tok = AutoTokenizer.from_pretrained(base)
    assert model.config.hidden_size == 128 and tok.pad_token is not None
    for d in (base, pretrained / "artifacts/skillworld/runs/pretrain/checkpoints"):
        cfg = yaml.safe_load((d / "config.yaml").read_text())
        assert cfg["trainer"]["max_steps"] == 3
        assert cfg["model"]["class_path"] == "ra3.em.MStepModule"
    assert (pretrained / "artifacts/skillworld/runs/pretrain/checkpoints/last.ckpt").exists()
    assert list((pretrained / "artifacts/skillworld/runs/pretrain/wandb").glob("offline-run-*"))


@pytest.mark.slow
def test_ntp_config_midtrains_the_exported_base(pretrained):
    fit = ra3("fit", "-c", str(ROOT / "configs/skillworld/ntp.yaml"), "--trainer.max_steps=2",
              "--trainer.val_check_interval=2", "--data.init_args.batch_size=2", cwd=pretrained)
    assert fit.returncode == 0, fit.stderr[-3000:]
    assert (pretrained / "artifacts/skillworld/ntp/model.safetensors").exists()


def test_print_config_lists_documented_options():
    out = ra3("fit", "-c", str(ROOT / "configs/skillworld/pretrain.yaml"), "--print_config=comments", cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "ra3.em.MStepModule" in out.stdout
    assert "peak learning rate of AdamW" in out.stdout  # docstrings become comments
    assert "pack several programs per row" in out.stdout


def test_unknown_config_key_names_the_key(tmp_path):
    out = ra3("fit", "-c", str(ROOT / "configs/skillworld/pretrain.yaml"), "--model.init_args.learnin_rate=1", cwd=tmp_path)
    assert out.returncode != 0
    assert "learnin_rate" in out.stderr


def test_missing_tokenizer_is_one_line_error_before_training(tmp_path):
    out = ra3("fit", "-c", str(ROOT / "configs/skillworld/pretrain.yaml"), cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1] == (
        "ra3: error: tokenizer path 'artifacts/skillworld/tokenizer' is not a directory (did the phase that writes it run?)"
    )
    assert not (tmp_path / "artifacts/skillworld/runs").exists()


def test_command_options_come_from_the_function_signature():
    """``add_parameters``: one option per parameter, help from the docstring's Args, type from the annotation."""
    import argparse

    from ra3.cli import add_parameters

    def command(name: str, sizes: list[int] | None = None, pairs: dict[str, str] | None = None,
                values: dict[str, object] | None = None, fast: bool = False, rate: float = 1e-3, hidden: int = 0):
        """Does nothing.

        Args:
            name: what to call it; a sentence that goes on
                over two lines.
            sizes: several ints.
        """

    p = argparse.ArgumentParser()
    names = add_parameters(p, command, skip=("hidden",), pairs={"flags": ["--pair"]})
    assert names == ["name", "sizes", "pairs", "values", "fast", "rate"]
    a = p.parse_args(["--name", "x", "--sizes", "1", "2", "--pair", "a=b=c", "--pair", "d=e", "--values", "lr=1e-3",
                      "grid=[1e-3, 3e-3]", "n=2", "--fast"])
    assert (a.name, a.sizes, a.fast, a.rate) == ("x", [1, 2], True, 1e-3)
    assert a.pairs == {"a": "b=c", "d": "e"}  # strings as given
    assert a.values == {"lr": 1e-3, "grid": [1e-3, 3e-3], "n": 2}  # YAML, with 1e-3 a float
    helps = {act.dest: act.help for act in p._actions}
    assert helps["name"] == "what to call it; a sentence that goes on over two lines." and helps["sizes"] == "several ints."
    with pytest.raises(SystemExit):
        p.parse_args([])  # name has no default: required
    with pytest.raises(SystemExit):
        p.parse_args(["--name", "x", "--pair", "novalue"])


def test_evaluate_study_and_quickstart_options_are_their_signatures():
    import inspect

    from ra3 import cli
    from ra3.evaluation.passk import evaluate
    from ra3.experiments.quickstart import quickstart
    from ra3.experiments.study import Study

    help_text = subprocess.run([sys.executable, "-m", "ra3.cli", "evaluate", "--help"], capture_output=True, text=True).stdout
    for name in inspect.signature(evaluate).parameters:
        flag = {"benchmarks": "--benchmark", "sources": "--source"}.get(name, f"--{name}")
        assert (flag in help_text) == (name != "progress"), name
    quick = {a.dest for a in cli.quickstart_parser()._actions} - {"help"}
    assert quick == set(inspect.signature(quickstart).parameters)
    assert "--first_seed" in subprocess.run([sys.executable, "-m", "ra3.cli", "study", "--help"], capture_output=True,
                                            text=True).stdout and "first_seed" in inspect.signature(Study).parameters
