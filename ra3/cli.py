"""The ``ra3`` command: LightningCLI subcommands (fit, validate, test) plus ra3's own (world, ...).

``ra3 fit -c configs/skillworld/pretrain.yaml`` trains; model and data are given by ``class_path`` so any
``PolicyModule`` / ``LightningDataModule`` subclass plugs in. The resolved config is written beside
the checkpoints, into the log directory and into the model's ``export_dir``.
"""

from __future__ import annotations

import argparse
import json
import inspect
import os
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any

from ra3.errors import Ra3Error


def _docstring_args(fn) -> dict[str, str]:
    """``name: text`` entries of a Google-style ``Args:`` section (continuation lines joined)."""
    doc, out, name, indent = inspect.getdoc(fn) or "", {}, None, None
    lines = doc.splitlines()
    start = next((i + 1 for i, line in enumerate(lines) if line.strip() == "Args:"), len(lines))
    for line in lines[start:]:
        if not line.strip():
            break
        width = len(line) - len(line.lstrip())
        m = re.match(r"\s*(\w+)(?: \([^)]*\))?: (.*)", line)
        if m and (indent is None or width == indent):
            name, indent = m.group(1), width
            out[name] = m.group(2)
        elif name:
            out[name] += " " + line.strip()
    return out


class _Pairs(argparse.Action):
    """``KEY=VALUE ...`` (repeatable) into a dict; values parsed as YAML unless the dict holds strings."""

    def __init__(self, *args, as_text: bool = True, **kwargs):
        self.as_text = as_text
        super().__init__(*args, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        out = dict(getattr(namespace, self.dest) or {})
        for item in values:
            key, sep, value = item.partition("=")
            if not sep or not key:
                parser.error(f"{option_string} takes KEY=VALUE pairs, got {item!r}")
            out[key] = value if self.as_text else _yaml_value(value)
        setattr(namespace, self.dest, out)


def _yaml_value(text: str) -> Any:
    """YAML, with ``1e-3`` a float (YAML 1.1 reads a mantissa without a dot as a string)."""
    import yaml

    def numbers(v):
        if isinstance(v, str) and re.fullmatch(r"[-+]?\d+(\.\d*)?[eE][-+]?\d+", v):
            return float(v)
        if isinstance(v, list):
            return [numbers(x) for x in v]
        if isinstance(v, dict):
            return {k: numbers(x) for k, x in v.items()}
        return v

    return numbers(yaml.safe_load(text))


def add_parameters(p: argparse.ArgumentParser, fn, skip: tuple[str, ...] = (), **options: dict) -> list[str]:
    """One ``--name`` option per parameter of ``fn`` (a function, or a class's ``__init__``), so a command's
    arguments are its function's signature: default from the signature, help from the docstring's ``Args:``,
    type from the annotation (``list[X]``: several values; ``dict``: ``KEY=VALUE`` pairs; ``bool``: a switch;
    ``X | None``: ``X``). ``options[name]`` adds argparse keywords, ``flags`` renames. Returns the names added."""
    target = fn.__init__ if inspect.isclass(fn) else fn
    hints, docs = typing.get_type_hints(target), _docstring_args(fn)
    names = []
    for name, param in inspect.signature(target).parameters.items():
        if name in skip or name == "self" or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        kind = hints.get(name, str)
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        if typing.get_origin(kind) in (typing.Union, types.UnionType) and len(args) == 1:
            kind = args[0]
        origin, inner = typing.get_origin(kind), typing.get_args(kind)
        extra = dict(options.get(name, {}))
        flags = extra.pop("flags", [f"--{name}"])
        kw: dict[str, Any] = {"dest": name, "help": docs.get(name, "").replace("%", "%%") or None}
        if param.default is param.empty:
            kw["required"] = True
        else:
            kw["default"] = param.default
        if origin in (list, tuple):
            kw.update(nargs="+", type=inner[0] if inner else str)
        elif origin is dict or kind is dict:
            kw.update(nargs="+", action=_Pairs, metavar="KEY=VALUE", as_text=bool(inner) and inner[1] is str)
        elif kind is bool:
            kw["action"] = argparse.BooleanOptionalAction
        else:
            kw["type"] = kind
        p.add_argument(*flags, **{**kw, **extra})
        names.append(name)
    return names


def _lightning_cli(args: list[str] | None) -> None:
    from lightning.pytorch.cli import LightningCLI, SaveConfigCallback

    from ra3.data.datamodule import CodeDataModule
    from ra3.policy.module import PolicyModule
    from ra3.policy.strategies import register

    register()

    class SaveConfigEverywhere(SaveConfigCallback):
        """Writes ``config.yaml`` to the log dir, the checkpoint dir and the model's ``export_dir``."""

        def save_config(self, trainer, pl_module, stage: str) -> None:
            dirs = {trainer.log_dir}
            for cb in trainer.checkpoint_callbacks:
                if getattr(cb, "dirpath", None):
                    dirs.add(cb.dirpath)
            export_dir = getattr(pl_module.hparams, "export_dir", None)
            if export_dir:
                dirs.add(export_dir)
            if trainer.is_global_zero:
                for d in filter(None, dirs):
                    Path(d).mkdir(parents=True, exist_ok=True)
                    self.parser.save(self.config, Path(d) / self.config_filename, skip_none=False,
                                     overwrite=True, multifile=self.multifile)

        def setup(self, trainer, pl_module, stage: str) -> None:
            self.save_config(trainer, pl_module, stage)

    class RA3CLI(LightningCLI):
        """LightningCLI whose recipe connects the data to the model once both are built (``CodeDataModule.connect``)."""

        def instantiate_classes(self) -> None:
            super().instantiate_classes()
            if hasattr(self.datamodule, "connect") and hasattr(self.model, "data_view"):
                self.datamodule.connect(tokenizer=self.model.tokenizer, view=self.model.data_view)

    RA3CLI(
        PolicyModule,
        CodeDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_callback=SaveConfigEverywhere,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
        args=args,
    )


def _world(args: list[str]) -> None:
    from jsonargparse import ArgumentParser

    from ra3.data.skillworld import WorldConfig, build_world
    from ra3.data.tokenizer import train_bpe_tokenizer

    parser = ArgumentParser(prog="ra3 world", description="Build the synthetic skill world and its BPE tokenizer.")
    parser.add_argument("--out", type=str, default="artifacts/skillworld", help="output directory")
    parser.add_argument("--vocab_size", type=int, default=1024, help="BPE vocabulary size (an upper bound)")
    parser.add_class_arguments(WorldConfig, "world")
    cfg = parser.parse_args(args)
    world_cfg = WorldConfig(**cfg.world.as_dict())
    paths = build_world(cfg.out, world_cfg)
    tok = train_bpe_tokenizer([paths["pretrain"]], Path(cfg.out) / "tokenizer", cfg.vocab_size)
    for name, path in paths.items():
        print(f"{name:>9}: {path}")
    print(f"tokenizer: {Path(cfg.out) / 'tokenizer'} ({len(tok)} tokens)")


def _evaluate(args: list[str]) -> None:
    from ra3.data.benchmarks import BENCHMARKS
    from ra3.evaluation.passk import evaluate, format_table
    from ra3.rollout import ENGINES

    p = argparse.ArgumentParser(prog="ra3 evaluate", description="pass@k of a model, or of existing samples, on code benchmarks.")
    names = add_parameters(p, evaluate, skip=("progress",),
                           benchmarks={"flags": ["--benchmark", "--benchmarks"], "choices": BENCHMARKS},
                           sources={"flags": ["--source"], "metavar": "NAME=PATH"}, engine={"choices": ENGINES})
    p.add_argument("--data_dir", help="folder holding HumanEval.jsonl.gz / MbppPlus.jsonl (sets RA3_DATA_DIR)")
    a = p.parse_args(args)
    if a.data_dir:
        os.environ["RA3_DATA_DIR"] = a.data_dir
    unknown = sorted(set(a.sources or {}) - set(BENCHMARKS))
    if unknown:
        raise Ra3Error(f"--source NAME=PATH takes NAME one of {', '.join(BENCHMARKS)}; got {', '.join(unknown)}")
    results = evaluate(**{n: getattr(a, n) for n in names})
    print(format_table(results))
    print(f"results: {Path(a.output_dir) / 'results.json'}")


def _em(args: list[str]) -> None:
    from ra3.em.loop import main

    main(args)


def quickstart_parser() -> argparse.ArgumentParser:
    from ra3.experiments.quickstart import PRESETS, quickstart

    p = argparse.ArgumentParser(prog="ra3 quickstart", description="One base of the study: NTP vs the oracle vs RA3 "
                                "mid-training, then RLVR from each; report, results and plots in --out. Re-running resumes.")
    add_parameters(p, quickstart, preset={"choices": list(PRESETS)})
    return p


def _quickstart(args: list[str]) -> None:
    from ra3.experiments.quickstart import quickstart

    a = quickstart_parser().parse_args(args)
    quickstart(**vars(a)).run()
    print(open(Path(a.out) / "report.md").read())
    print(f"ra3 quickstart: report {Path(a.out) / 'report.md'}, results {Path(a.out) / 'results.json'}")


def _study(args: list[str]) -> None:
    from ra3.experiments.study import PRESETS, Study

    p = argparse.ArgumentParser(prog="ra3 study", description="Does RA3 beat NTP? NTP, oracle and RA3 mid-training, then "
                                "RLVR from each, over several pre-training seeds (bases), with paired 95 %% confidence "
                                "intervals; report, results and plots in --out. Re-running resumes.")
    names = add_parameters(p, Study, preset={"choices": list(PRESETS)}, settings={"flags": ["--set"]})
    p.add_argument("--dry_run", action="store_true", help="print each stage (done or not, dependencies, command); run nothing")
    a = p.parse_args(args)
    study = Study(**{n: getattr(a, n) for n in names})
    if a.dry_run:
        print("\n".join(study.plan()))
        return
    study.run()
    print(open(Path(a.out) / "report.md").read())
    print(f"ra3 study: report {Path(a.out) / 'report.md'}, results {Path(a.out) / 'results.json'}")


def _consolidate(args: list[str]) -> None:
    from ra3.policy.consolidate import main

    main(args)


def _data(args: list[str]) -> None:
    import argparse

    from ra3.data.prep import Filters, run

    p = argparse.ArgumentParser(prog="ra3 data", description="Filter, deduplicate and decontaminate a corpus into "
                                "mid-training rows (CodeDataModule) or RL rows (RLVRModule); resumable by shard.")
    p.add_argument("kind", choices=["midtrain", "rl"])
    p.add_argument("--source", required=True, help="hub dataset name, datasets directory, .jsonl(.gz) or .parquet file")
    p.add_argument("--out", required=True)
    p.add_argument("--split", default="train")
    p.add_argument("--text_field", help="column holding the code (default: the first of text, content, code, ...)")
    p.add_argument("--streaming", action="store_true", help="stream a hub dataset instead of downloading it whole")
    p.add_argument("--shard_size", type=int, default=10_000)
    p.add_argument("--limit", type=int, help="read the first N rows only")
    f = Filters()
    p.add_argument("--min_lines", type=int, default=f.min_lines)
    p.add_argument("--max_lines", type=int, default=f.max_lines)
    p.add_argument("--max_chars", type=int, default=f.max_chars)
    p.add_argument("--strip_comments", action="store_true", help="drop # comments and docstrings (default: keep)")
    p.add_argument("--near_dup_threshold", type=float, default=f.near_dup_threshold,
                   help="MinHash Jaccard threshold for near duplicates (<= 0: exact duplicates only)")
    p.add_argument("--ngram", type=int, default=f.ngram, help="token window shared with a benchmark that removes a row")
    p.add_argument("--benchmarks", nargs="*", default=list(f.benchmarks), choices=["humaneval", "mbppplus"])
    p.add_argument("--benchmark_files", nargs="*", default=[], metavar="FILE",
                   help="more benchmarks to decontaminate against, e.g. a LiveCodeBench .jsonl (question_content, "
                        "prompt, solution, tests ... are indexed)")
    a = p.parse_args(args)
    filters = Filters(a.min_lines, a.max_lines, a.max_chars, a.strip_comments,
                      a.near_dup_threshold if a.near_dup_threshold and a.near_dup_threshold > 0 else None, a.ngram,
                      tuple(a.benchmarks), benchmark_files=tuple(a.benchmark_files))
    report = run(a.kind, a.source, a.out, a.split, a.text_field, a.streaming, a.shard_size, a.limit, filters)
    print(f"ra3 data: read {report['rows_read']}, kept {report['rows_kept']}; removed: "
          + (", ".join(f"{k} {v}" for k, v in report["removed"].items()) or "none")
          + (f"; benchmark tasks matched: {len(report['benchmark_tasks_matched'])}" if report["benchmark_tasks_matched"] else "")
          + f"\nra3 data: rows in {a.out}/{a.kind}-*.jsonl, report {a.out}/report.json")


RECIPES = Path(__file__).resolve().parent / "configs"


def recipe_names() -> list[str]:
    """Shipped recipes, ``<model or world>/<method>`` (e.g. ``skillworld/ntp``, ``qwen2.5-1.5b/ra3``)."""
    return sorted(f"{p.parent.name}/{p.stem}" for p in RECIPES.glob("*/*.yaml"))


def resolve_config(value: str) -> str:
    """A ``-c`` value: an existing file as given, else a shipped recipe by name (``skillworld/ntp[.yaml]``, also
    ``configs/skillworld/ntp.yaml`` from any directory)."""
    if os.path.exists(value):
        return value
    name = value.removeprefix("configs/").removesuffix(".yaml")
    path = RECIPES / f"{name}.yaml"
    return str(path) if path.is_file() else value


def _config(args: list[str]) -> None:
    import argparse
    import shutil

    p = argparse.ArgumentParser(prog="ra3 config", description="The shipped recipes: list them, print one, or copy one "
                                "to edit. Any `-c NAME` (e.g. `ra3 fit -c skillworld/ntp`) also finds a shipped recipe.")
    sub = p.add_subparsers(dest="action", required=True)
    sub.add_parser("list", help="names of the shipped recipes")
    show = sub.add_parser("show", help="print a recipe")
    show.add_argument("name")
    copy = sub.add_parser("copy", help="copy a recipe to a file or folder, to edit")
    copy.add_argument("name")
    copy.add_argument("dest")
    doc = sub.add_parser("document", help="print a recipe with every key commented from the docstrings (a comment "
                         "already there is kept)")
    doc.add_argument("name")
    doc.add_argument("--write", action="store_true", help="update the file in place")
    doc.add_argument("--check", action="store_true", help="list the keys without a comment; exit 1 if there are any")
    a = p.parse_args(args)
    if a.action == "list":
        print("\n".join(recipe_names()))
        return
    path = Path(resolve_config(a.name))
    if not path.is_file():
        raise Ra3Error(f"no recipe named {a.name!r}; `ra3 config list` shows {len(recipe_names())} of them")
    if a.action == "show":
        print(path.read_text(), end="")
    elif a.action == "document":
        from ra3.config_docs import document, recipe_descriptions, undocumented

        docs = recipe_descriptions(path, main)
        if a.check:
            bare = undocumented(path, docs)
            if bare:
                raise Ra3Error(f"{path}: keys without a comment: {', '.join(bare)} "
                               f"(`ra3 config document {a.name} --write` adds them)")
            print(f"ra3 config: every key of {path} is documented")
            return
        text, missing = document(path, docs)
        if a.write:
            path.write_text(text)
            print(f"ra3 config: documented {path}" + (f"; no docstring for {', '.join(missing)}" if missing else ""))
        else:
            print(text, end="")
    else:
        dest = Path(a.dest) / path.name if Path(a.dest).is_dir() else Path(a.dest)
        if dest.exists():
            raise Ra3Error(f"{dest} exists already; remove it or choose another destination")
        shutil.copyfile(path, dest)
        print(f"ra3 config: wrote {dest}")


def _diagnostic_corpus(args: list[str]) -> None:
    from ra3.experiments.diagnostics import KINDS, __doc__ as doc, write

    p = argparse.ArgumentParser(prog="ra3 diagnostic_corpus", description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kind", choices=KINDS)
    p.add_argument("--bootstrapped", required=True, help="RA3's bootstrapped.jsonl (rows with thoughts and ground truth)")
    p.add_argument("--oracle", help="the oracle corpus (midtrain_oracle.jsonl; noisy_oracle only)")
    p.add_argument("--out", required=True, help="the corpus to write (JSONL; stats beside it)")
    a = p.parse_args(args)
    print(json.dumps(write(a.kind, a.out, a.bootstrapped, a.oracle)))


COMMANDS = {"diagnostic_corpus": _diagnostic_corpus, "world": _world, "evaluate": _evaluate, "em": _em, "quickstart": _quickstart, "study": _study, "config": _config, "data": _data,
            "consolidate": _consolidate}


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    for i, a in enumerate(args):  # shipped recipes by name, from any working directory
        if i > 0 and args[i - 1] in ("-c", "--config"):
            args[i] = resolve_config(a)
        elif a.startswith("--config="):
            args[i] = "--config=" + resolve_config(a.split("=", 1)[1])
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        if args and args[0] in COMMANDS:
            COMMANDS[args[0]](args[1:])
        else:
            _lightning_cli(args)
    except Exception as e:
        cause = _ra3_error_in_chain(e)
        if cause is None:
            raise
        print(f"ra3: error: {cause}", file=sys.stderr)
        sys.exit(2)


def _ra3_error_in_chain(e: BaseException | None) -> Ra3Error | None:
    """jsonargparse wraps errors raised while instantiating classes; find ours underneath."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, Ra3Error):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


if __name__ == "__main__":
    main()
