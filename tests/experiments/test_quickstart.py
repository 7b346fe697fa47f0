"""``ra3 quickstart --preset test`` end to end, interrupted (SIGINT, then SIGKILL) and re-run.

It runs the ``ra3`` script of the wheel installed in a fresh virtual environment (``installed_wheel``), from an empty
directory: the user's path after ``pip install ra3``, not the checkout's. The quickstart is the study with one base
(``tests/experiments/test_study.py`` checks the study's report in depth); here: resume, exported models, W&B runs, the one-base report.
"""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest


def start(wheel, cwd):
    return subprocess.Popen([str(wheel.ra3), "quickstart", "--preset", "test", "--out", "qs"], cwd=cwd, env=wheel.env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def wait_for(path: Path, proc, timeout=400):
    start_t = time.time()
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        assert time.time() - start_t < timeout
        time.sleep(0.1)


@pytest.mark.slow
def test_quickstart_end_to_end_with_interruptions(installed_wheel, tmp_path):
    out = tmp_path / "qs"
    stages = out / "stages"
    # 1) SIGINT once pre-training is done
    p = start(installed_wheel, tmp_path)
    wait_for(stages / "b0_pretrain.done", p)
    os.killpg(p.pid, signal.SIGINT)
    p.communicate(timeout=120)
    # 2) re-run, SIGKILL (the whole process group) once NTP is done
    p = start(installed_wheel, tmp_path)
    wait_for(stages / "b0_ntp.done", p)
    os.killpg(p.pid, signal.SIGKILL)
    p.communicate(timeout=60)
    kept = {m.name: m.read_text() for m in stages.glob("*.done")}
    assert {"world.done", "b0_pretrain.done", "b0_ntp.done"} <= set(kept)
    # 3) re-run to the end: finished stages are skipped, not redone
    p = start(installed_wheel, tmp_path)
    log, _ = p.communicate(timeout=900)
    assert p.returncode == 0, log[-4000:]
    assert f"{len(kept)}/" in log.splitlines()[0] and "b0_pretrain: started" not in log and "b0_ntp: started" not in log
    assert {m.name: m.read_text() for m in stages.glob("*.done") if m.name in kept} == kept

    # exported models load with plain transformers
    from transformers import AutoModelForCausalLM

    for name in ("base", "ntp", "oracle", "rlvr_ntp", "rlvr_oracle", "rlvr_ra3"):
        AutoModelForCausalLM.from_pretrained(out / "b0" / name)
    state = json.loads((out / "b0" / "ra3" / "em_state.json").read_text())
    assert state["done"]
    AutoModelForCausalLM.from_pretrained(state["policy"])

    results = json.loads((out / "results.json").read_text())
    assert results["bases"] == ["b0"]
    for model in ("base", "ntp", "oracle", "ra3", "rlvr_ntp", "rlvr_oracle", "rlvr_ra3"):
        c = results["pass@1"][model]["all"]
        assert 0.0 <= c["mean"] <= 1.0 and c["n"] == 1
    boot = results["paired"]["oracle-ntp"]["all"]["boot"]  # one base: the interval resamples tasks
    assert boot["lo"] <= boot["mean"] <= boot["hi"]
    assert results["thought_accuracy"]["b0"]["round_0"]["n"] > 0
    assert 0 < results["peak_rss_mb"] < 8192
    report = (out / "report.md").read_text()
    assert "1 base," in report and "**One base.**" in report and "| oracle-ntp |" in report and "![passk](passk.png)" in report
    # W&B, offline: pre-training, NTP, the oracle, RA3's EM, three RLVR runs
    assert len(list((out / "wandb").glob("**/offline-run-*"))) >= 7


def test_the_peak_rss_of_a_resumed_run_counts_the_stages_an_earlier_run_finished(tmp_path):
    """Stage markers carry the peak RSS of their run, so a run that resumes after them still reports it."""
    import sys

    from ra3.data.io import peak_rss_of_stages, write_stage_marker

    subprocess.run([sys.executable, "-c", "x = bytearray(300 << 20)"], check=True)  # a 300 MB child
    write_stage_marker(tmp_path / "stages" / "big.done", 1.0)
    marked = json.loads((tmp_path / "stages" / "big.done").read_text())
    assert marked["seconds"] == 1.0 and marked["peak_rss_mb"] > 300
    assert peak_rss_of_stages(tmp_path / "stages") >= marked["peak_rss_mb"]
    (tmp_path / "stages" / "big.done").write_text(json.dumps({"seconds": 1.0, "peak_rss_mb": 5000.0}))
    assert peak_rss_of_stages(tmp_path / "stages") == 5000.0  # an earlier run's stage, larger than this run's
