"""``ra3 study --preset test`` end to end in subprocesses: SIGKILL mid-run, re-run to the end, check the report."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest


def start(out, *extra):
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "ra3.cli", "study", "--preset", "test", "--out", str(out), *extra],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


@pytest.mark.slow
def test_study_end_to_end_survives_sigkill(tmp_path):
    out = tmp_path / "study"
    stages = out / "stages"
    p = start(out)
    t0 = time.time()
    while not (stages / "b0_ntp.done").exists():  # SIGKILL the whole process group once a mid-training arm is done
        assert p.poll() is None, p.communicate()[0][-3000:]
        assert time.time() - t0 < 400
        time.sleep(0.1)
    os.killpg(p.pid, signal.SIGKILL)
    p.communicate(timeout=60)
    kept = {m.name: m.read_text() for m in stages.glob("*.done")}
    assert {"world.done", "b0_pretrain.done", "b0_ntp.done"} <= set(kept)

    p = start(out)
    log, _ = p.communicate(timeout=900)
    assert p.returncode == 0, log[-4000:]
    assert f"{len(kept)}/" in log.splitlines()[0] and "b0_ntp: started" not in log  # done stages are not redone
    assert {m.name: m.read_text() for m in stages.glob("*.done") if m.name in kept} == kept

    res = json.loads((out / "results.json").read_text())
    assert res["bases"] == ["b0", "b1"]
    for model in ("base", "ntp", "oracle", "ra3", "rlvr_ntp", "rlvr_oracle", "rlvr_ra3", "rlvr_step2_ra3"):
        c = res["pass@1"][model]["all"]
        assert set(c["per_base"]) == {"b0", "b1"} and 0.0 <= c["mean"] <= 1.0 and c["lo"] <= c["mean"] <= c["hi"]
    for diff in ("oracle-ntp", "ra3-ntp"):
        d = res["paired"][diff]
        assert d["all"]["t"]["n"] == 2 and d["all"]["boot"]["lo"] <= d["all"]["boot"]["hi"]
        assert "A" in d and "B" in d  # eval.jsonl = eval_a + eval_b
    for arm in ("ntp", "oracle", "ra3"):
        assert set(res["rlvr_curves"][arm]) == {"b0", "b1"} and len(res["rlvr_curves"][arm]["b0"]) == 4
    assert "steps_ratio_ra3/ntp" in res["rlvr"] and "auc_ra3-ntp" in res["rlvr"]
    assert 0 < res["peak_rss_mb"] < 8192 and res["wall_s"] > 0
    report = (out / "report.md").read_text()
    assert "| oracle-ntp |" in report and "![passk](passk.png)" in report
    per_task = (out / "per_task.csv").read_text().splitlines()
    assert per_task[0] == "task_id,set,base,ntp,oracle,ra3,rlvr_step2_ra3,rlvr_ntp,rlvr_oracle,rlvr_ra3"
    assert len(per_task) == 1 + 12
    diag = res["rlvr_diagnostics"]["ra3"]
    assert diag["completion_length"]["first"] > 0 and 0 <= diag["truncated_frac"]["last"] <= 1
    assert "| ra3 | " in report and "zero_std_frac" in report

    from PIL import Image

    for png in ("passk.png", "rlvr_reward.png"):
        with Image.open(out / png) as im:
            im.load()
            assert im.size[0] > 100
    # a mid-RLVR Lightning checkpoint was evaluated (ra3 evaluate reads RLVRModule checkpoints)
    assert (out / "runs" / "b0_rlvr_ra3" / "checkpoints" / "step=2.ckpt").exists()
    assert res["thought_accuracy"]["b0"]["round_0"]["n"] > 0

    # the diagnostic arms, added to the finished study: built from each base's bootstrapped corpus, then mid-trained
    p = start(out, "--set", "arms=[ntp, oracle, ra3, ra3_corrected, oracle_noisy]")
    log, _ = p.communicate(timeout=600)
    assert p.returncode == 0, log[-4000:]
    assert "b0_rlvr_ntp: started" not in log and "b0_corpus_ra3_corrected: started" in log
    res = json.loads((out / "results.json").read_text())
    for arm in ("ra3_corrected", "oracle_noisy"):
        assert set(res["pass@1"][arm]["all"]["per_base"]) == {"b0", "b1"}
        stats = json.loads((out / "b0" / f"{arm}.jsonl.stats.json").read_text())
        assert stats["rows"] > 0 and stats["thoughts_changed"] >= 0
    assert res["paired"]["ra3_corrected-ra3"]["all"]["t"]["n"] == 2 and "oracle-oracle_noisy" in res["paired"]


def test_bad_study_settings_are_one_line_errors(tmp_path):
    env = {**os.environ, "WANDB_MODE": "offline"}
    for extra, message in ((["--set", "rlvr_stepz=3"], "unknown study setting 'rlvr_stepz'"),
                           (["--set", "rlvr.warmup_stepz=3"], "unknown rlvr setting 'warmup_stepz'"),
                           (["--set", "rlvr.learning_rate=1"], "rlvr setting 'learning_rate' is set by the study"),
                           (["--set", "em.bootstrap_scop=all"], "unknown em setting 'bootstrap_scop'"),
                           (["--set", "arms=[ntp, ra3_corrected]"], "arms must include ra3 and oracle"),
                           (["--bases", "0"], "at least 1 base"),
                           (["--preset", "huge"], "invalid choice")):
        r = subprocess.run([sys.executable, "-m", "ra3.cli", "study", "--out", str(tmp_path / "s"), *extra], env=env,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and message in r.stderr.strip().splitlines()[-1], r.stderr
    assert not (tmp_path / "s" / "stages").exists()


def test_rlvr_settings_reach_the_rlvr_stages_and_checkpoints_are_scored(tmp_path):
    """``rlvr.ARG=VALUE`` (any RLVRModule argument) lands in every RLVR stage's config, ``em.ARG`` / ``estep.ARG`` in
    the RA3 arm's; ``rlvr_eval_points`` spaces the scored checkpoints over the run."""
    import yaml

    from ra3.experiments.study import Study

    study = Study(str(tmp_path / "s"), preset="default", settings={"rlvr.warmup_steps": 5, "rlvr.dynamic_sampling": True,
                                                                    "rlvr_steps": 120, "rlvr_eval_points": 4,
                                                                    "em.bootstrap_scope": "all", "estep.group_size": 8})
    study.build()
    config = yaml.safe_load((tmp_path / "s" / "configs" / "b0_rlvr_ra3.yaml").read_text())
    model = config["model"]["init_args"]
    assert model["warmup_steps"] == 5 and model["dynamic_sampling"] is True and model["learning_rate"] == study.p.rlvr_lr == 3e-5
    assert config["trainer"]["callbacks"][0]["init_args"]["every_n_train_steps"] == 30
    em = yaml.safe_load((tmp_path / "s" / "configs" / "b0_ra3.yaml").read_text())
    assert em["em"]["bootstrap_scope"] == "all" and em["estep"]["init_args"]["group_size"] == 8
    assert study.rlvr_checkpoint_steps() == [30, 60, 90]
    assert {f"b0_eval_rlvr_step{n}_ntp" for n in (30, 60, 90)} <= set(study.stages)
    assert "step=60.ckpt" in " ".join(study.stages["b0_eval_rlvr_step60_ntp"].args)


def test_ready_stages_start_longest_chain_first(tmp_path):
    """Pre-trainings (the longest chains) start before a finished base's evaluations, so the last base does not
    run its whole pipeline alone at the end; the default world's chains are world > pretrain > arm > RLVR > eval."""
    from ra3.experiments.study import Study

    study = Study(str(tmp_path / "s"), preset="default")
    study.build()
    depth = study.critical_path()
    assert depth["world"] == max(depth.values())
    assert depth["b4_pretrain"] > depth["b0_ntp"] > depth["b0_rlvr_ntp"] > depth["b0_eval_rlvr_ntp"] == 1
    assert depth["b0_pretrain"] > depth["b0_eval_base"]


def test_a_lone_pretraining_takes_every_lane_and_the_scheduler_counts_lanes(tmp_path, monkeypatch):
    """One base: its pre-training runs with ``jobs`` threads (nothing else is ready then); several bases: one each.
    The scheduler never runs more threads than ``jobs``."""
    import threading

    import ra3.experiments.report
    from ra3.experiments.study import Study, Stage

    one, five = Study(str(tmp_path / "a"), preset="pilot"), Study(str(tmp_path / "b"), preset="default")
    one.build(), five.build()
    assert one.stages["b0_pretrain"].threads == 2 and five.stages["b0_pretrain"].threads == 1
    assert all(st.threads == 1 for n, st in one.stages.items() if n != "b0_pretrain")

    study = Study(str(tmp_path / "c"), preset="test", jobs=2)
    graph = {"w": Stage("w", [], [], 1), "big": Stage("big", [], ["w"], 2), "x": Stage("x", [], ["w"], 1),
             "y": Stage("y", [], ["w"], 1), "z": Stage("z", [], ["big"], 1)}
    lanes, peak, lock = [0], [0], threading.Lock()

    def fake_run(stage):
        with lock:
            lanes[0] += stage.threads
            peak[0] = max(peak[0], lanes[0])
        time.sleep(0.05)
        with lock:
            lanes[0] -= stage.threads
        study.times[stage.name] = 0.05
        return 0

    monkeypatch.setattr(study, "build", lambda: study.stages.update(graph))
    monkeypatch.setattr(study, "_run_stage", fake_run)
    monkeypatch.setattr(ra3.experiments.report, "write_report", lambda s, wall_s: {})
    study.run()
    assert set(study.times) == set(graph) and peak[0] == 2


def test_one_base_reports_means_and_a_task_bootstrap(tmp_path):
    """With one base there is no t interval (nan, shown as a mean) but the paired bootstrap still resamples tasks."""
    from ra3.experiments.study import Study
    from ra3.experiments.report import collect

    study = Study(str(tmp_path / "s"), preset="test", bases=1)
    passes = {"base": [1, 0, 0, 0], "ntp": [1, 1, 0, 0], "oracle": [1, 1, 1, 0], "ra3": [1, 1, 1, 1]}
    for model, verdicts in passes.items():
        d = study.out / "eval" / f"b0_eval_{model}"
        d.mkdir(parents=True)
        rows = [{"task_id": f"skillworld/eval_a/{i}", "status": "passed" if v else "failed", "passed": bool(v)}
                for i, v in enumerate(verdicts)]
        (d / "eval_results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = collect(study)
    assert res["pass@1"]["ntp"]["all"]["mean"] == 0.5 and res["pass@1"]["ntp"]["all"]["n"] == 1
    assert res["pass@1"]["ntp"]["all"]["half"] != res["pass@1"]["ntp"]["all"]["half"]  # nan
    d = res["paired"]["oracle-ntp"]["all"]
    assert d["t"]["mean"] == 0.25 and d["t"]["n"] == 1
    assert d["boot"]["lo"] == 0.0 and 0.25 < d["boot"]["hi"] <= 1.0  # 4 tasks resampled
    assert "ra3_share_of_oracle_gain" not in res


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=lambda s: s.name)
def test_stopping_the_study_stops_its_running_stages(tmp_path, sig):
    """The signal goes to the study's process alone (a scheduler's SIGTERM, `kill`): the stage it is running must
    not live on, orphaned, to race the re-run that starts the same stage on the same files."""
    import psutil

    out = tmp_path / "study"
    p = start(out)
    t0 = time.time()
    while not [c for c in psutil.Process(p.pid).children() if "ra3.cli" in " ".join(c.cmdline())]:
        assert p.poll() is None and time.time() - t0 < 60, p.communicate()[0][-3000:]
        time.sleep(0.05)
    os.kill(p.pid, sig)
    p.communicate(timeout=60)
    assert p.returncode != 0
    time.sleep(0.5)
    left = [q.pid for q in psutil.process_iter(["cmdline"]) if str(out) in " ".join(q.info["cmdline"] or [])]
    assert not left, f"stage processes left running after {sig.name}: {left}"


def _probe(name="rlvr_probe"):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rlvr_probe_decision_rule():
    """A value passes when no base/init checkpoint drops > max_drop points below its start and every init ends
    above its start (mean over bases); among LRs the largest within 1 point of the best gain is chosen."""
    probe = _probe()

    def row(ntp, ra3):
        return {"ntp": {"pass@1": ntp}, "ra3": {"pass@1": ra3}}

    steady = row({"b0": [0.80, 0.79, 0.82, 0.84], "b1": [0.70, 0.72, 0.73, 0.75]},
                 {"b0": [0.75, 0.76, 0.78, 0.79], "b1": [0.78, 0.77, 0.80, 0.81]})
    dip = row({"b0": [0.80, 0.60, 0.70, 0.85], "b1": [0.70, 0.72, 0.73, 0.75]},  # -20 points at a checkpoint
              {"b0": [0.75, 0.76, 0.78, 0.79], "b1": [0.78, 0.77, 0.80, 0.81]})
    flat = row({"b0": [0.80, 0.80, 0.80, 0.79], "b1": [0.70, 0.70, 0.70, 0.70]},  # ntp does not improve
               {"b0": [0.75, 0.76, 0.78, 0.79], "b1": [0.78, 0.77, 0.80, 0.81]})
    v = {name: probe.verdict(r, 3.0) for name, r in (("steady", steady), ("dip", dip), ("flat", flat))}
    assert v["steady"]["passes"] and v["steady"]["worst_drop"] == pytest.approx(1.0)
    assert not v["dip"]["passes"] and v["dip"]["worst_drop"] == pytest.approx(20.0)
    assert not v["flat"]["passes"] and v["flat"]["final_gain"]["ntp"] < 0
    small = row({"b0": [0.80, 0.80, 0.81, 0.845], "b1": [0.70, 0.70, 0.71, 0.755]},
                {"b0": [0.75, 0.75, 0.76, 0.79], "b1": [0.78, 0.78, 0.79, 0.81]})  # gain 4.25, steady's 4.0
    table = {"3e-4": {"verdict": v["dip"]}, "1e-4": {"verdict": v["steady"]}, "3e-5": {"verdict": probe.verdict(small, 3.0)}}
    assert probe.choose(table, "rlvr_lr") == "1e-4"  # within 1 point of the best gain, the larger LR
    assert probe.choose(table, "rlvr.loss_type") == "3e-5"  # not an LR: the best gain
    assert probe.choose({"3e-4": {"verdict": v["dip"]}}, "rlvr_lr") is None


def test_ra3_probe_decision_rule():
    """Better: RA3 − NTP >= min_gain above the pilot's and the bootstrap CI of (candidate − pilot RA3) above 0; a
    combination (its settings contain another better candidate's) is chosen only if it beats that part by min_gain."""
    probe = _probe("ra3_probe")

    def cand(gain, lo, settings):
        return {"ra3-ntp": -1.5 + gain, "vs_pilot": {"mean": gain, "lo": lo, "hi": gain + 3}, "settings": settings}

    table = {"pilot": {"ra3-ntp": -1.5}, "retry": cand(3.2, 0.5, ["fmt", "retries=8", "drop"]),
             "retry_g8": cand(3.4, 0.6, ["fmt", "retries=8", "drop", "G=8"]),  # a combination, +0.2 over its part
             "grounded": cand(2.5, -0.3, ["fmt", "drop"]),  # CI touches 0
             "small": cand(1.0, 0.2, ["other"])}  # under min_gain
    assert probe.choose(table) == (["retry", "retry_g8"], "retry")
    table["retry_g8"] = cand(5.3, 1.0, ["fmt", "retries=8", "drop", "G=8"])  # beats its part by 2.1: chosen
    assert probe.choose(table) == (["retry", "retry_g8"], "retry_g8")
    assert probe.choose({"pilot": {"ra3-ntp": 0.0}, "x": cand(1.0, -1.0, ["a"])}) == ([], None)


def test_compare_runs_sees_a_changed_weight_and_ignores_timings_and_moved_class_paths(tmp_path):
    """``benchmarks/compare_runs.py``: the before/after check of a refactor (models, corpora, samples, verdicts)."""
    import json

    import torch

    compare = _probe("compare_runs")
    for name, weight, seconds, class_path in (("before", 1.0, 3.2, "ra3.modules.MStepModule"),
                                              ("after", 1.0, 4.7, "ra3.em.MStepModule"),
                                              ("changed", 1.5, 3.2, "ra3.em.MStepModule")):
        root = tmp_path / name
        (root / "logs").mkdir(parents=True)
        (root / "logs" / "x.log").write_text(f"took {seconds} s")
        (root / "results.json").write_text(json.dumps({"pass@1": {"ntp": float("nan"), "ra3": 0.5}, "wall_s": seconds,
                                                       "stage_seconds": {"a": seconds}}))
        (root / "config.yaml").write_text(f"model:\n  class_path: {class_path}\n  init_args: {{lr: 0.1}}\n")
        torch.save({"state_dict": {"w": torch.full((2,), weight)}, "hyper_parameters": {"_class_path": class_path}},
                   root / "last.ckpt")
    assert compare.compare(tmp_path / "before", tmp_path / "after") == []
    found = compare.compare(tmp_path / "before", tmp_path / "changed")
    assert found == ["last.ckpt: /state_dict/w"]
    (tmp_path / "changed" / "results.json").write_text(json.dumps({"pass@1": {"ntp": 0.1, "ra3": 0.5}}))
    assert "results.json: /pass@1/ntp: nan != 0.1" in compare.compare(tmp_path / "before", tmp_path / "changed")
    assert compare.main([str(tmp_path / "before"), str(tmp_path / "after")]) == 0
