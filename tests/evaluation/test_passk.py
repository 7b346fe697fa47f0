"""``ra3 evaluate`` (generation and samples mode) and PassAtKCallback, with the real sandbox."""

import json
import os
import subprocess
import sys

import lightning as L
import pytest

from ra3.evaluation.callback import PassAtKCallback
from ra3.data import CodeDataModule
from ra3.em import MStepModule

from conftest import TINY_LLAMA



def ra3(*args, cwd, timeout=300):
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "ra3.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_evaluate_generates_scores_and_writes_evalplus_samples(tiny_model_dir, world_dir, tmp_path):
    out = ra3("evaluate", "--model", str(tiny_model_dir), "--benchmark", "skillworld", "--source",
              f"skillworld={world_dir / 'eval.jsonl'}", "--limit", "5", "--n_samples", "2", "--temperature", "1.0",
              "--k", "1", "2", "--max_new_tokens", "24", "--output_dir", str(tmp_path / "ev"), cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "skillworld" in out.stdout and "pass@2" in out.stdout
    samples = [json.loads(l) for l in open(tmp_path / "ev/samples.jsonl")]
    rows = [json.loads(l) for l in open(tmp_path / "ev/eval_results.jsonl")]
    assert len(samples) == len(rows) == 10
    assert [s["task_id"] for s in samples] == [r["task_id"] for r in rows]
    assert all(s["solution"].startswith("def solve(xs):") and s["solution"].endswith(s["completion"]) for s in samples)
    results = json.loads((tmp_path / "ev/results.json").read_text())["skillworld"]
    assert results["n_tasks"] == 5 and 0.0 <= results["pass@1"] <= results["pass@2"] <= 1.0
    assert sum(results["status_counts"].values()) == 10


def test_scoring_existing_samples_in_input_order(tmp_path, shared_data):
    he = [json.loads(l) for l in __import__("gzip").open(shared_data / "HumanEval.jsonl.gz", "rt")][:3]
    samples = [
        {"task_id": he[0]["task_id"], "completion": he[0]["canonical_solution"]},
        {"task_id": he[1]["task_id"], "solution": he[1]["prompt"] + he[1]["canonical_solution"]},
        {"task_id": he[0]["task_id"], "completion": "    return None\n"},
        {"task_id": he[2]["task_id"], "completion": "    while True: pass\n"},
    ]
    path = tmp_path / "samples.jsonl"
    path.write_text("".join(json.dumps(s) + "\n" for s in samples))
    out = ra3("evaluate", "--samples", str(path), "--benchmark", "humaneval", "--data_dir", str(shared_data),
              "--output_dir", str(tmp_path / "out"), cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [json.loads(l) for l in open(tmp_path / "out/eval_results.jsonl")]
    assert [(r["task_id"], r["passed"]) for r in rows] == [(s["task_id"], ok) for s, ok in zip(samples, [True, True, False, False])]
    assert [r["status"] for r in rows][2:] == ["failed", "timeout"]
    result = json.loads((tmp_path / "out/results.json").read_text())["humaneval"]
    assert result["n_tasks"] == 3 and result["pass@1"] == pytest.approx((0.5 + 1 + 0) / 3)
    assert result["host_judged"] == 1.0  # every assert of these three tasks is judged on the host
    assert "host-judged" in out.stdout and "100.0%" in out.stdout


def test_shipped_benchmark_data_scores_offline_without_a_data_dir(tmp_path, monkeypatch):
    """HumanEval and MBPP(+) ship inside the package: no --data_dir, no $RA3_DATA_DIR, the hub unreachable."""
    from ra3.data.benchmarks import load_mbpp, load_mbppplus

    monkeypatch.delenv("RA3_DATA_DIR", raising=False)
    assert len(load_mbpp()) == 399 and len(load_mbppplus()) == 399
    path = tmp_path / "samples.jsonl"
    path.write_text(json.dumps({"task_id": "HumanEval/0", "completion": "    return True\n"}) + "\n")
    out = ra3("evaluate", "--samples", str(path), "--benchmark", "humaneval", "--output_dir", str(tmp_path / "out"), cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads((tmp_path / "out/results.json").read_text())["humaneval"]
    assert result["n_tasks"] == 1 and result["pass@1"] == 0.0


def test_bad_samples_name_the_line(tmp_path, world_dir):
    path = tmp_path / "s.jsonl"
    path.write_text(json.dumps({"task_id": "skillworld/eval/0", "completion": ""}) + "\n"
                    + json.dumps({"task_id": "nope/1", "completion": ""}) + "\n")
    out = ra3("evaluate", "--samples", str(path), "--benchmark", "skillworld", "--source",
              f"skillworld={world_dir / 'eval.jsonl'}", "--output_dir", str(tmp_path / "o"), cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1] == f"ra3: error: {path}: line 2: task_id 'nope/1' is not in the benchmark"
    path.write_text("{broken\n")
    out = ra3("evaluate", "--samples", str(path), "--benchmark", "skillworld", "--source",
              f"skillworld={world_dir / 'eval.jsonl'}", "--output_dir", str(tmp_path / "o"), cwd=tmp_path)
    assert out.returncode == 2 and "line 1 is not valid JSON" in out.stderr


def test_pass_at_k_callback_logs_during_fit(world_dir, tmp_path):
    from lightning.pytorch.loggers import WandbLogger

    callback = PassAtKCallback("skillworld", str(world_dir / "eval.jsonl"), n_samples=2, k=[1, 2], temperature=1.0,
                               max_new_tokens=16, limit=4, workers=2)
    module = MStepModule(tokenizer=str(world_dir / "tokenizer"), model_config=TINY_LLAMA)
    data = CodeDataModule(train_files=[str(world_dir / "midtrain.jsonl")], max_length=256, batch_size=2, val_fraction=0.05)
    logger = WandbLogger(project="ra3-test", save_dir=str(tmp_path), offline=True)
    trainer = L.Trainer(accelerator="cpu", max_steps=2, val_check_interval=2, logger=logger, callbacks=[callback],
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, limit_val_batches=1)
    data.connect(tokenizer=module.tokenizer, view=module.data_view)
    trainer.fit(module, data)
    m = trainer.callback_metrics
    assert 0.0 <= float(m["eval/skillworld/pass@1"]) <= float(m["eval/skillworld/pass@2"]) <= 1.0
    assert set(callback.last) == {"eval/skillworld/pass@1", "eval/skillworld/pass@2"}


def test_sampled_evaluation_is_reproducible_and_batch_independent(tiny_model_dir, world_dir):
    """Per-problem seeds: the same samples on a second run and with another batch size; another seed differs."""
    from dataclasses import replace

    from ra3.data.benchmarks import load_skillworld
    from ra3.evaluation.passk import generate_samples, load_policy
    from ra3.rollout.hf_engine import HFEngine
    from ra3.rollout.sampling import SamplingConfig

    engine = HFEngine(*load_policy(str(tiny_model_dir)))
    problems = load_skillworld(str(world_dir / "eval.jsonl"))[:4]
    sampling = SamplingConfig(max_new_tokens=16, temperature=1.0, batch_size=8)

    def texts(seed, batch_size=8):
        return [s["completion"] for s in generate_samples(engine, problems, 2, replace(sampling, batch_size=batch_size), seed)]

    first = texts(0)
    assert texts(0, batch_size=3) == first and texts(0) == first
    assert texts(1) != first


def test_sampling_overlapped_with_the_sandbox_scores_the_same(tiny_model_dir, world_dir):
    """``sample_and_score`` with each sample run as soon as it is sampled (the default on GPU) and run after all
    sampling (the default on CPU): the same samples, rows and summary, every result reported once."""
    from ra3.data.benchmarks import load_skillworld
    from ra3.evaluation.passk import load_policy, sample_and_score
    from ra3.execution import SandboxPool
    from ra3.rollout.sampling import SamplingConfig
    from ra3.rollout.ragged_engine import RaggedEngine

    engine = RaggedEngine(*load_policy(str(tiny_model_dir)))
    problems = load_skillworld(str(world_dir / "eval.jsonl"))[:6]
    sampling = SamplingConfig(max_new_tokens=24, temperature=1.0, batch_size=4, stop=["e"])
    runs = {}
    with SandboxPool(workers=2) as pool:
        for overlap in (False, True):
            seen = []
            runs[overlap] = sample_and_score(engine, problems, 2, sampling, pool, [1, 2], overlap=overlap,
                                             on_result=lambda i, r: seen.append(i))
            assert sorted(seen) == list(range(12))
    assert runs[True] == runs[False]
    assert len({s["completion"] for s in runs[True][2]}) > 1
