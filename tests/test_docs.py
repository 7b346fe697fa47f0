"""Every ``ra3`` command shown in the README and ``docs/*.md`` runs, at a tiny scale, so the docs cannot rot.

Commands are taken from the ```` ```bash ```` blocks as written (continuation lines joined, comments dropped) and run
in-process (``ra3.cli.main``) in one working directory laid out like a user's: ``artifacts/skillworld`` holds a
small skill world and a tiny base model; the hub names the docs use (``Qwen/Qwen2.5-1.5B``,
``meta-llama/Llama-3.1-8B``, ``bigcode/the-stack-smol``) are local directories of the same name, which ``transformers`` and ``datasets`` read
before trying the hub; the files a user brings (``my_problems.jsonl``, ``samples.jsonl``) are small fixtures.
Each command gets tiny-scale overrides appended (later flags win: 1 training step, a few tokens, one task).
What cannot run on one CPU process is parsed in full instead of run — multi-process FSDP2 commands
(``--print_config``; ``tests/policy/test_sharding.py`` runs FSDP2 on 2 processes) and ``ra3 quickstart``
(argument parsing; ``tests/experiments/test_quickstart.py`` runs its test preset) — and ``ra3 study`` prints its plan
(``--dry_run``).
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# reading order inside the tutorial matters (data before training before evaluation); other pages follow it
ORDER = ["real-models.md", "quickstart.md", "training.md", "evaluation.md", "scale.md", "study.md", "README.md"]

TRAINER = ["--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.precision", "32-true",
           "--trainer.max_steps", "1", "--trainer.logger", "false", "--trainer.val_check_interval", "1",
           "--trainer.accumulate_grad_batches", "1", "--trainer.enable_progress_bar", "false"]
TINY = {
    "fit": TRAINER + ["--data.init_args.batch_size", "2", "--data.init_args.max_length", "256"],
    "fit:rlvr": TRAINER + ["--model.init_args.num_generations", "2", "--model.init_args.max_new_tokens", "8",
                           "--data.init_args.program_batch_size", "2", "--data.init_args.max_length", "256"],
    "em": ["--trainer", '{"accelerator": "cpu", "devices": 1, "precision": "32-true", "enable_progress_bar": false}',
           "--wandb", "null", "--em.rounds", "2", "--em.estep_steps", "1", "--em.mstep_steps", "1",
           "--em.bootstrap_limit", "4", "--em.eval_source", "null", "--estep.init_args.group_size", "2",
           "--data.init_args.batch_size", "2", "--data.init_args.program_batch_size", "2",
           "--data.init_args.max_length", "256"],
    "evaluate": ["--limit", "1", "--max_new_tokens", "8", "--workers", "1"],
    "study": ["--dry_run"],
}


def doc_commands() -> list[tuple[str, list[str]]]:
    """``(where, argv)`` for every ``ra3`` command in a bash block of the README and docs, in reading order."""
    found = []
    for page in sorted(PAGES, key=lambda p: ORDER.index(p.name) if p.name in ORDER else len(ORDER)):
        lines = page.read_text().splitlines()
        in_bash = False
        for i, line in enumerate(lines):
            if line.startswith("```"):
                in_bash = not in_bash and line.strip() == "```bash"
                continue
            if not in_bash or lines[i - 1].rstrip().endswith("\\"):
                continue
            j, text = i, line
            while text.rstrip().endswith("\\"):
                j += 1
                text = text.rstrip()[:-1] + " " + lines[j].strip()
            for part in text.split("&&"):
                argv = shlex.split(part, comments=True)
                if argv[:1] == ["ra3"]:
                    found.append((f"{page.relative_to(ROOT)}:{i + 1}", argv[1:]))
    return found


def _value(argv: list[str], flag: str) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv else None


def _multi_process(argv: list[str]) -> bool:
    devices = _value(argv, "--trainer.devices") or ""
    trainer = json.loads(_value(argv, "--trainer") or "{}")
    return (devices.isdigit() and int(devices) > 1) or "--trainer.num_nodes" in argv or int(trainer.get("devices", 1)) > 1


def tiny(argv: list[str]) -> tuple[list[str], str]:
    """The command at a tiny scale, and how it is checked: ``run`` or ``parse``."""
    cmd = argv[0]
    if cmd in ("fit", "em") and _multi_process(argv):
        return argv + ["--print_config"], "parse"
    if cmd == "quickstart":
        return argv, "parse"
    if cmd == "fit":
        config = _value(argv, "-c") or ""
        return argv + TINY["fit:rlvr" if "rlvr" in config else "fit"], "run"
    return argv + TINY.get(cmd, []), "run"


@pytest.fixture(scope="module")
def user_dir(tmp_path_factory, world_dir, tiny_model_dir):
    """A working directory laid out as the docs assume (see the module docstring)."""
    import shutil

    import datasets

    work = tmp_path_factory.mktemp("docs")
    sw = work / "artifacts" / "skillworld"
    shutil.copytree(world_dir, sw)
    shutil.copytree(tiny_model_dir, sw / "base")
    shutil.copytree(tiny_model_dir, work / "Qwen" / "Qwen2.5-1.5B")
    shutil.copytree(tiny_model_dir, work / "meta-llama" / "Llama-3.1-8B")
    programs = [json.loads(line)["text"] for line in (world_dir / "midtrain.jsonl").read_text().splitlines()[:12]]
    datasets.Dataset.from_list([{"content": t, "license": "mit"} for t in programs]).save_to_disk(
        str(work / "bigcode" / "the-stack-smol"))
    rl = (world_dir / "rl.jsonl").read_text().splitlines()[:4]
    (work / "my_problems.jsonl").write_text("\n".join(rl) + "\n")
    (work / "my_rl.jsonl").write_text("\n".join(rl) + "\n")
    (work / "samples.jsonl").write_text(json.dumps({"task_id": "HumanEval/0", "completion": "    return False\n"}) + "\n")
    return work


def test_the_docs_show_the_commands_a_user_needs():
    """The harvesting itself: if it silently found nothing, the test below would check nothing."""
    seen = {argv[0] for _, argv in doc_commands()}
    assert {"fit", "em", "evaluate", "data", "config", "study", "quickstart"} <= seen, seen
    tutorial = [argv[0] for where, argv in doc_commands() if where.startswith("docs/real-models.md")]
    assert tutorial[:2] == ["config", "config"] and tutorial.count("fit") == 6 and tutorial.count("evaluate") == 4 and tutorial[-1] == "evaluate", tutorial


@pytest.mark.slow
def test_every_documented_command_runs_at_a_tiny_scale(user_dir, monkeypatch, capsys):
    from ra3 import cli
    from ra3.cli import main

    monkeypatch.chdir(user_dir)
    ran = []
    for where, argv in doc_commands():
        args, how = tiny(argv)
        if how == "parse" and args[0] == "quickstart":
            cli.quickstart_parser().parse_args(args[1:])
            ran.append(where)
            continue
        try:
            main(args)
            code = 0
        except SystemExit as e:  # --print_config exits 0
            code = e.code or 0
        out = capsys.readouterr()
        assert code == 0, f"{where}: ra3 {shlex.join(argv)} failed:\n{out.err[-3000:]}"
        ran.append(where)
    assert len(ran) == len(doc_commands())
    # the tutorial's outputs exist where its later steps read them
    for model in ("qwen2.5-1.5b/ntp", "qwen2.5-1.5b/ra3/round_1/mstep_policy", "qwen2.5-1.5b/rlvr", "qwen2.5-1.5b/rlvr_ntp",
                  "llama-3.1-8b/ntp-lora"):  # the LoRA run exports the merged model
        assert (user_dir / "artifacts" / model / "config.json").exists(), model
    report = json.loads((user_dir / "data" / "midtrain" / "report.json").read_text())
    assert report["rows_kept"] >= 1, report
    results = json.loads((user_dir / "out" / "results.json").read_text())  # the samples scored from a file
    assert results["humaneval"]["n_tasks"] == 1 and re.match(r"0(\.0)?$", str(results["humaneval"]["pass@1"]))


def test_every_relative_link_in_the_docs_points_to_a_file():
    import re

    # the written pages (the reports copied under docs/study/ are run outputs, their plots not always kept)
    pages = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "docs" / "history").glob("*.md"))]
    broken = []
    for page in pages:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # links inside code blocks are not links
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            path = target.split("#")[0]
            if path and not re.match(r"[a-z]+:", path) and not (page.parent / path).exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert not broken, broken
