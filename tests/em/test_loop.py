"""``ra3 em`` end to end (subprocesses): rounds, W&B offline run, SIGKILL + --resume, extensions, alpha=1."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def em_args(world_dir, model_dir, out, *extra):
    return ["em", "-c", str(ROOT / "configs/skillworld/ra3.yaml"), "--out_dir", str(out), "--base_model", str(model_dir),
            "--data.init_args.train_files", json.dumps([str(world_dir / "midtrain.jsonl")]),
            "--data.init_args.batch_size", "2", "--data.init_args.max_length", "256",
            "--data.init_args.program_batch_size", "4", "--estep.init_args.group_size", "2",
            "--estep.init_args.max_thought_tokens", "4", "--em.estep_steps", "3", "--em.mstep_steps", "3",
            "--em.bootstrap_limit", "24", "--em.bootstrap_part_size", "4", "--em.bootstrap_batch_size", "4",
            "--em.checkpoint_every_n_steps", "1", "--em.eval_source", str(world_dir / "eval.jsonl"),
            "--em.eval_limit", "4", "--trainer.enable_progress_bar", "false", *extra]


def popen(args, cwd):
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).parent)}
    return subprocess.Popen([sys.executable, "-m", "ra3.cli", *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def run(args, cwd, timeout=300):
    p = popen(args, cwd)
    out, err = p.communicate(timeout=timeout)
    return p.returncode, out, err


def rows(out, k):
    return [json.loads(l) for l in open(out / f"round_{k}" / "bootstrapped.jsonl")]


@pytest.fixture(scope="module")
def uninterrupted(world_dir, tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("em_full")
    rc, stdout, err = run(em_args(world_dir, tiny_model_dir, out, "--em.rounds", "2"), out)
    assert rc == 0, err[-3000:]
    return out, stdout


@pytest.mark.slow
def test_em_two_rounds_end_to_end_with_wandb(uninterrupted):
    out, stdout = uninterrupted
    assert "round 0:" in stdout and "round 1:" in stdout
    summary = json.loads((out / "em_summary.json").read_text())
    assert [s["round"] for s in summary] == [0, 1]
    for s in summary:
        for key in ("estep/reward_mean", "estep/thought_rate", "bootstrap/boundary_f1", "mstep/loss", "heldout_pass@1"):
            assert key in s, key
    # one learning-rate schedule over both rounds' M-steps (3 steps each): round 1 continues at step 3 of 6
    from ra3.policy.module import lr_factor

    for k in (0, 1):
        ckpt = torch.load(out / f"round_{k}" / "mstep" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
        hp = ckpt["hyper_parameters"]
        assert (hp["schedule_offset"], hp["schedule_steps"]) == (3 * k, 6)
        next_lr = ckpt["lr_schedulers"][0]["_last_lr"][0]  # after the phase's 3 steps
        assert next_lr == pytest.approx(hp["learning_rate"] * lr_factor(3 * k + 3, hp["warmup_steps"], 6, hp["min_lr_ratio"]))
    for k in (0, 1):
        assert len(rows(out, k)) == 24
        assert (out / f"round_{k}/mstep_policy/model.safetensors").exists()
    state = json.loads((out / "em_state.json").read_text())
    assert state["done"] and state["round"] == 2 and state["policy"].endswith("round_1/mstep_policy")
    run_file = next((out / "wandb").glob("offline-run-*/run-*.wandb"))
    blob = run_file.read_bytes()
    for key in (b"estep/reward_mean", b"estep/thought_rate", b"mstep/loss", b"em/round", b"bootstrap/boundary_f1"):
        assert key in blob, key
    assert len(list((out / "wandb").glob("offline-run-*"))) == 1  # one W&B run for the whole EM loop


def _kill_when(proc, condition, timeout=240):
    start = time.time()
    while time.time() - start < timeout:
        if condition():
            proc.send_signal(signal.SIGKILL)
            proc.communicate()
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.02)
    proc.kill()
    return False


@pytest.mark.slow
def test_sigkill_mid_phase_then_resume_loses_and_duplicates_nothing(world_dir, tiny_model_dir, tmp_path, uninterrupted):
    out = tmp_path / "em"
    args = em_args(world_dir, tiny_model_dir, out, "--em.rounds", "2")
    # 1) killed mid E-step (after its first checkpoint)
    p = popen(args, tmp_path)
    assert _kill_when(p, lambda: (out / "round_0/estep/checkpoints/last.ckpt").exists())
    state = json.loads((out / "em_state.json").read_text())
    assert state["phase"] == "estep" and state["round"] == 0
    # 2) resumed, killed mid bootstrap (some parts written, shard not assembled)
    p = popen(args + ["--resume", "true"], tmp_path)
    parts = out / "round_0/parts"
    assert _kill_when(p, lambda: parts.exists() and len(list(parts.glob("part_*.jsonl"))) >= 2
                      and not (out / "round_0/bootstrapped.jsonl").exists())
    assert json.loads((out / "em_state.json").read_text())["phase"] == "bootstrap"
    # 3) resumed, killed mid M-step of round 1
    p = popen(args + ["--resume", "true"], tmp_path)
    assert _kill_when(p, lambda: (out / "round_1/mstep/checkpoints/last.ckpt").exists())
    # 4) resumed to the end
    rc, stdout, err = run(args + ["--resume", "true"], tmp_path)
    assert rc == 0, err[-3000:]
    full_out, _ = uninterrupted
    for k in (0, 1):
        resumed, full = rows(out, k), rows(full_out, k)
        assert len(resumed) == len(full) == 24
        assert [r["task_id"] for r in resumed] == [r["task_id"] for r in full]  # none lost, none duplicated
    assert json.loads((out / "em_state.json").read_text())["done"]


def test_starting_over_an_existing_run_needs_resume(world_dir, tiny_model_dir, tmp_path):
    (tmp_path / "em").mkdir()
    (tmp_path / "em/em_state.json").write_text("{}")
    rc, _, err = run(em_args(world_dir, tiny_model_dir, tmp_path / "em"), tmp_path)
    assert rc == 2 and "pass --resume" in err.strip().splitlines()[-1]


@pytest.mark.parametrize("text,message", [("{not json", "is not an EM state"), ('{"rounds": 2}', "is not an EM state"),
                                          ('{"phase": "mstepp"}', "unknown phase 'mstepp'")])
def test_a_damaged_em_state_is_one_line_on_resume(world_dir, tiny_model_dir, tmp_path, text, message):
    (tmp_path / "em").mkdir()
    (tmp_path / "em/em_state.json").write_text(text)
    rc, _, err = run(em_args(world_dir, tiny_model_dir, tmp_path / "em", "--resume", "true"), tmp_path)
    last = err.strip().splitlines()[-1]
    assert rc == 2 and last.startswith("ra3: error:") and message in last, err[-2000:]


@pytest.mark.parametrize("extra,message", [
    (["--estep.init_args.thought_cost", "-0.1"], "thought_cost (c) must be >= 0"),
    (["--estep.init_args.group_size", "1"], "group_size must be >= 2"),
    (["--em.roundz", "3"], "roundz"),
])
def test_bad_em_config_is_one_line_before_training(world_dir, tiny_model_dir, tmp_path, extra, message):
    rc, _, err = run(em_args(world_dir, tiny_model_dir, tmp_path / "em", *extra), tmp_path)
    assert rc == 2
    last = err.strip().splitlines()[-1]
    assert last.startswith("ra3: error:") and message in last
    assert not (tmp_path / "em" / "em_state.json").exists()


def test_missing_base_model_is_one_line_before_training(world_dir, tmp_path):
    rc, _, err = run(em_args(world_dir, tmp_path / "no_model_here", tmp_path / "em"), tmp_path)
    assert rc == 2 and "base model path" in err.strip().splitlines()[-1]


@pytest.mark.slow
def test_custom_reward_and_thought_format_plug_in_by_class_path(world_dir, tiny_model_dir, tmp_path):
    out = tmp_path / "em"
    rc, _, err = run(em_args(world_dir, tiny_model_dir, out, "--em.rounds", "1",
                             "--estep.class_path", "extensions.FlatRewardEStep",
                             "--estep.init_args.thought_format", '{"class_path": "extensions.ArrowThoughts"}'), tmp_path)
    assert rc == 0, err[-3000:]
    summary = json.loads((out / "em_summary.json").read_text())[0]
    assert summary["estep/reward_mean"] == pytest.approx(summary["estep/thoughts_per_program"], abs=1e-5)
    annotated = rows(out, 0)
    assert sum(len(r["thoughts"]) for r in annotated) > 0
    for r in annotated:
        arrows = [l for l in r["text"].split("\n") if l.strip().startswith("# ->")]
        assert len(arrows) == len(r["thoughts"])


def test_alpha_one_reduces_em_to_ntp(world_dir, tiny_model_dir, tmp_path):
    """alpha = 1 never thinks; with ``bootstrap_scope: all`` the bootstrapped corpus is then NTP's corpus row for row
    (every program, file order), so the M-step's own split holds out the programs an NTP run holds out."""
    from ra3.data import CodeDataModule

    out = tmp_path / "em"
    rc, _, err = run(em_args(world_dir, tiny_model_dir, out, "--em.rounds", "1", "--estep.init_args.alpha", "1.0",
                             "--em.bootstrap_scope", "all", "--em.bootstrap_limit", "null", "--em.eval_source", "null"),
                     tmp_path)
    assert rc == 0, err[-3000:]
    originals = [json.loads(l) for l in open(world_dir / "midtrain.jsonl")]
    boot = rows(out, 0)
    assert [r["task_id"] for r in boot] == [r["task_id"] for r in originals]
    for r, o in zip(boot, originals):
        assert r["thoughts"] == [] and r["text"] == o["text"]
    held_out = []
    for corpus in (world_dir / "midtrain.jsonl", out / "round_0" / "bootstrapped.jsonl"):
        data = CodeDataModule(train_files=[str(corpus)], val_fraction=0.02, seed=0)
        data.setup("fit")
        held_out.append([r["task_id"] for r in data.val_programs])
    assert held_out[0] == held_out[1] and held_out[0]


@pytest.mark.slow
@pytest.mark.parametrize("mstep_init", ["estep", "previous"])
def test_mstep_init_picks_the_weights_the_mstep_starts_from(world_dir, tiny_model_dir, tmp_path, mstep_init):
    """With a negligible M-step learning rate (1e-30: every update is below float32 resolution) the M-step policy
    is its starting point: the round's E-step policy (``estep``) or, in round 0, the base model (``previous``)."""
    from safetensors.torch import load_file

    out = tmp_path / "em"
    rc, _, err = run(em_args(world_dir, tiny_model_dir, out, "--em.rounds", "1", "--em.mstep_init", mstep_init,
                             "--em.eval_source", "null", "--estep.init_args.learning_rate", "1e-2",
                             "--mstep.init_args.learning_rate", "1e-30", "--mstep.init_args.warmup_steps", "0"), tmp_path)
    assert rc == 0, err[-3000:]
    weights = {name: load_file(path / "model.safetensors") for name, path in
               [("base", tiny_model_dir), ("estep", out / "round_0/estep_policy"), ("mstep", out / "round_0/mstep_policy")]}

    def same(a, b):
        return all(torch.equal(weights[a][k], weights[b][k]) for k in weights[a])

    assert not same("estep", "base")
    assert same("mstep", "base" if mstep_init == "previous" else "estep")


@pytest.mark.slow
def test_lora_em_two_rounds_resumes_after_sigkill(world_dir, tiny_model_dir, tmp_path):
    """LoRA in both phases: the E-step exports its adapter, which the bootstrap and the M-step (``mstep_init: estep``)
    load onto the base and train on; the M-step exports the merged model, which the next round adapts afresh.
    Killed mid E-step of round 1, resumed to the end."""
    out = tmp_path / "em"
    lora = json.dumps({"r": 4, "alpha": 8})
    args = em_args(world_dir, tiny_model_dir, out, "--em.rounds", "2", "--wandb", "null", "--estep.init_args.peft", lora,
                   "--estep.init_args.export_adapter", "true", "--mstep.init_args.peft", lora)
    p = popen(args, tmp_path)
    assert _kill_when(p, lambda: (out / "round_1/estep/checkpoints/last.ckpt").exists())
    state = json.loads((out / "em_state.json").read_text())
    assert state["phase"] == "estep" and state["round"] == 1
    ckpt = torch.load(out / "round_1/estep/checkpoints/last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["state_dict"] and all("lora_" in k for k in ckpt["state_dict"])  # adapters only
    rc, stdout, err = run(args + ["--resume", "true"], tmp_path)
    assert rc == 0, err[-3000:]
    assert json.loads((out / "em_state.json").read_text())["done"] and "round 1:" in stdout
    from transformers import AutoModelForCausalLM

    for k in (0, 1):
        estep, mstep = out / f"round_{k}/estep_policy", out / f"round_{k}/mstep_policy"
        assert (estep / "adapter_config.json").exists() and not (estep / "model.safetensors").exists()
        assert (mstep / "model.safetensors").exists() and not (mstep / "adapter_config.json").exists()
        AutoModelForCausalLM.from_pretrained(mstep)
        assert len(rows(out, k)) == 24
    summary = json.loads((out / "em_summary.json").read_text())
    assert [s["round"] for s in summary] == [0, 1] and all("mstep/loss" in s for s in summary)
