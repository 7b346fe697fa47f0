"""``ra3 quickstart --preset test`` end to end, interrupted (SIGINT, then SIGKILL) and re-run.

It runs the ``ra3`` script of the wheel installed in a fresh virtual environment (``installed_wheel``), from an empty
directory: the user's path after ``pip install ra3``, not the checkout's.
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
    wait_for(stages / "pretrain.done", p)
    os.killpg(p.pid, signal.SIGINT)
    p.communicate(timeout=120)
    # 2) re-run, SIGKILL (the whole process group) once NTP is done
    p = start(installed_wheel, tmp_path)
    wait_for(stages / "ntp.done", p)
    os.killpg(p.pid, signal.SIGKILL)
    p.communicate(timeout=60)
    pretrain_time = json.loads((stages / "pretrain.done").read_text())
    # 3) re-run to the end: finished stages are skipped, not redone
    p = start(installed_wheel, tmp_path)
    log, _ = p.communicate(timeout=900)
    assert p.returncode == 0, log[-4000:]
    assert "== world: done already, skipped" in log and "== pretrain: done already, skipped" in log
    assert "== ntp: done already, skipped" in log
    assert json.loads((stages / "pretrain.done").read_text()) == pretrain_time

    # configs resolved and saved; checkpoints loadable with plain transformers
    from transformers import AutoModelForCausalLM

    for name in ("base", "ntp", "oracle", "rlvr_base", "rlvr_ntp", "rlvr_ra3"):
        assert (out / name / "config.yaml").exists(), name
        AutoModelForCausalLM.from_pretrained(out / name)
    state = json.loads((out / "ra3/em_state.json").read_text())
    assert state["done"]
    AutoModelForCausalLM.from_pretrained(state["policy"])

    results = json.loads((out / "results.json").read_text())
    for init in ("base", "ntp", "ra3", "oracle"):
        for key in ("pass@1", "pass@2"):
            assert 0.0 <= results["eval"][init][key] <= 1.0
    for init in ("base", "ntp", "ra3"):
        assert 0.0 <= results["eval_after_rlvr"][init]["pass@1"] <= 1.0
        curve = results["rlvr_curves"][init]
        assert len(curve) == 3 and all(0.0 <= v <= 1.0 for _, v in curve)
    assert results["em_rounds"][0]["round"] == 0 and 0.0 <= results["em_rounds"][0]["bootstrap/boundary_f1"] <= 1.0
    assert 0 < results["peak_rss_mb"] < 8192

    from PIL import Image

    for png in ("estep.png", "boundary_f1.png", "passk.png", "rlvr_reward.png"):
        with Image.open(out / png) as im:
            im.load()
            assert im.size[0] > 100 and im.size[1] > 100
    report = (out / "report.md").read_text()
    assert "| ra3 |" in report and "![passk](passk.png)" in report
    assert list((out / "wandb" / "wandb").glob("offline-run-*")) or list((out / "wandb").glob("**/offline-run-*"))


def test_the_peak_rss_of_a_resumed_run_counts_the_stages_an_earlier_run_finished(tmp_path):
    """Stage markers carry the peak RSS of their run, so a run that resumes after them still reports it."""
    import sys

    from ra3.io import peak_rss_of_stages, write_stage_marker

    subprocess.run([sys.executable, "-c", "x = bytearray(300 << 20)"], check=True)  # a 300 MB child
    write_stage_marker(tmp_path / "stages" / "big.done", 1.0)
    marked = json.loads((tmp_path / "stages" / "big.done").read_text())
    assert marked["seconds"] == 1.0 and marked["peak_rss_mb"] > 300
    assert peak_rss_of_stages(tmp_path / "stages") >= marked["peak_rss_mb"]
    (tmp_path / "stages" / "big.done").write_text(json.dumps({"seconds": 1.0, "peak_rss_mb": 5000.0}))
    assert peak_rss_of_stages(tmp_path / "stages") == 5000.0  # an earlier run's stage, larger than this run's
