"""The ``ra3`` command: LightningCLI subcommands (fit, validate, test) plus ra3's own (world, ...).

``ra3 fit -c configs/skillworld/pretrain.yaml`` trains; model and data are given by ``class_path`` so any
``PolicyModule`` / ``LightningDataModule`` subclass plugs in. The resolved config is written beside
the checkpoints, into the log directory and into the model's ``export_dir``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ra3.errors import Ra3Error


def _lightning_cli(args: list[str] | None) -> None:
    from lightning.pytorch.cli import LightningCLI, SaveConfigCallback

    from ra3.datamodules.code import CodeDataModule
    from ra3.modules.policy import PolicyModule
    from ra3.strategies import register

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

    LightningCLI(
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

    from ra3.datamodules.skillworld import WorldConfig, build_world
    from ra3.datamodules.tokenizer import train_bpe_tokenizer

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
    import argparse

    from ra3.datamodules.benchmarks import BENCHMARKS
    from ra3.evaluation import evaluate, format_table

    p = argparse.ArgumentParser(prog="ra3 evaluate", description="pass@k of a model, or of existing samples, on code benchmarks.")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--model", help="HF model name, exported directory, or Lightning .ckpt to generate with")
    what.add_argument("--samples", help="score an existing samples .jsonl ({task_id, completion|solution} per line)")
    p.add_argument("--benchmark", "--benchmarks", dest="benchmarks", nargs="+", required=True, choices=BENCHMARKS)
    p.add_argument("--source", action="append", default=[], metavar="NAME=PATH",
                   help="where a benchmark's data is (file, datasets dir or hub name); e.g. skillworld=artifacts/skillworld/eval.jsonl")
    p.add_argument("--data_dir", help="folder holding HumanEval.jsonl.gz / MbppPlus.jsonl (sets RA3_DATA_DIR)")
    p.add_argument("--output_dir", default="artifacts/eval")
    p.add_argument("--n_samples", type=int, default=1)
    p.add_argument("--k", type=int, nargs="+", default=[1])
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top_p", type=float, default=1.0)
    p.add_argument("--max_new_tokens", type=int, default=256)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--limit", type=int, help="first N tasks of each benchmark only")
    p.add_argument("--workers", type=int, help="sandbox processes in parallel (default: CPU count)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (per problem: the same samples on every run)")
    p.add_argument("--engine", default="hf", choices=["hf", "ragged"],
                   help="sampler: hf (model.generate) or ragged (continuous batching); the same completions")
    a = p.parse_args(args)
    if a.data_dir:
        os.environ["RA3_DATA_DIR"] = a.data_dir
    sources = {}
    for item in a.source:
        name, sep, path = item.partition("=")
        if not sep or name not in BENCHMARKS:
            raise Ra3Error(f"--source must look like NAME=PATH with NAME one of {', '.join(BENCHMARKS)}; got {item!r}")
        sources[name] = path
    results = evaluate(a.benchmarks, a.output_dir, model=a.model, samples=a.samples, sources=sources,
                       n_samples=a.n_samples, k=a.k, temperature=a.temperature, top_p=a.top_p,
                       max_new_tokens=a.max_new_tokens, batch_size=a.batch_size, limit=a.limit, workers=a.workers,
                       seed=a.seed, engine=a.engine)
    print(format_table(results))
    print(f"results: {Path(a.output_dir) / 'results.json'}")


def _em(args: list[str]) -> None:
    """``ra3 em -c configs/skillworld/ra3.yaml [--resume]``: RA3 EM rounds (see ``ra3.callbacks.em``)."""
    from jsonargparse import ActionConfigFile, ArgumentParser, Namespace

    import lightning as L

    from ra3.callbacks.em import EMCallback
    from ra3.datamodules.code import CodeDataModule
    from ra3.modules import EStepModule, MStepModule
    from ra3.hf import check_exists
    from ra3.strategies import register

    register()

    def module_parser(base, key):
        p = ArgumentParser(exit_on_error=False)
        p.add_subclass_arguments(base, key, required=True)
        return p

    parser = ArgumentParser(prog="ra3 em", description="RA3 mid-training: EM rounds of E-step, bootstrap and M-step.",
                            exit_on_error=False)
    parser.add_argument("-c", "--config", action=ActionConfigFile)
    parser.add_argument("--seed_everything", type=int, default=0, help="seed of every phase (data order, sampling)")
    parser.add_argument("--out_dir", type=str, default="artifacts/ra3", help="where rounds, shards, policies and state go")
    parser.add_argument("--base_model", type=str, required=True, help="the policy to start from (HF name or directory)")
    parser.add_argument("--resume", type=bool, default=False, help="continue the EM run recorded in out_dir")
    parser.add_argument("--trainer", type=dict, default={}, help="lightning.Trainer arguments shared by every phase")
    parser.add_argument("--wandb", type=dict | None, default={"project": "ra3", "offline": True},
                        help="WandbLogger arguments (one run for the whole EM loop); null disables W&B")
    parser.add_subclass_arguments(EStepModule, "estep", required=True)
    parser.add_subclass_arguments(MStepModule, "mstep", required=True)
    parser.add_subclass_arguments(CodeDataModule, "data", required=True)
    parser.add_class_arguments(EMCallback, "em")
    try:
        cfg = parser.parse_args(args)
    except Exception as e:  # jsonargparse ArgumentError: one line, naming the key
        raise Ra3Error(f"bad ra3 em config: {' '.join(str(e).split())[:400]}") from None
    check_exists(cfg.base_model, "base model")
    EStepModule.check_hparams(**cfg.estep.init_args.as_dict())
    L.seed_everything(cfg.seed_everything)
    estep_parser, mstep_parser = module_parser(EStepModule, "estep"), module_parser(MStepModule, "mstep")

    def factory(p, key, spec):
        def make(policy: str):
            spec_ = spec.clone()
            spec_.init_args.model, spec_.init_args.model_config, spec_.init_args.tokenizer = policy, None, None
            return p.instantiate_classes(Namespace(**{key: spec_}))[key]
        return make

    init = parser.instantiate_classes(Namespace(data=cfg.data, em=cfg.em))
    logger = None
    if cfg.wandb is not None:
        from lightning.pytorch.loggers import WandbLogger

        logger = WandbLogger(**{"save_dir": cfg.out_dir, "name": "em", **cfg.wandb})
        logger.log_hyperparams(cfg.as_dict())
    summaries = init.em.run(cfg.out_dir, cfg.base_model, factory(estep_parser, "estep", cfg.estep),
                            factory(mstep_parser, "mstep", cfg.mstep), init.data, cfg.trainer, logger, cfg.resume)
    if logger is not None:
        logger.finalize("success")
        import wandb

        wandb.finish()
    for s in summaries:
        line = ", ".join(f"{k}={v:.4g}" for k, v in s.items() if isinstance(v, float) and k.split("/")[-1] in
                         ("reward_mean", "thought_rate", "boundary_f1", "loss", "heldout_pass@1"))
        print(f"round {s['round']}: {line}")
    print(f"ra3 em: done; final policy {init.em.state.policy}")


def quickstart_parser():
    import argparse

    from ra3.quickstart import PRESETS

    p = argparse.ArgumentParser(prog="ra3 quickstart", description="Skill world: base vs NTP vs RA3 mid-training, "
                                "then RLVR from each; report, results and plots in --out. Re-running resumes.")
    p.add_argument("--out", default="artifacts/quickstart")
    p.add_argument("--preset", default="tiny", choices=list(PRESETS))
    p.add_argument("--seed", type=int, default=0)
    return p


def _quickstart(args: list[str]) -> None:
    from ra3.quickstart import Quickstart

    a = quickstart_parser().parse_args(args)
    Quickstart(a.out, a.preset, a.seed).run()
    print(open(Path(a.out) / "report.md").read())
    print(f"ra3 quickstart: report {Path(a.out) / 'report.md'}, results {Path(a.out) / 'results.json'}")


def _study(args: list[str]) -> None:
    import argparse

    from ra3.study import PRESETS, Study

    p = argparse.ArgumentParser(prog="ra3 study", description="Does RA3 beat NTP? NTP, oracle and RA3 mid-training, then "
                                "RLVR from each, over several pre-training seeds (bases), with paired 95 %% confidence "
                                "intervals; report, results and plots in --out. Re-running resumes.")
    p.add_argument("--out", default="artifacts/study")
    p.add_argument("--preset", default="default", choices=list(PRESETS))
    p.add_argument("--bases", type=int, help="number of pre-training seeds (default: the preset's)")
    p.add_argument("--first_seed", type=int, default=0, help="bases are seeds first_seed, first_seed + 1, ...")
    p.add_argument("--jobs", type=int, help="stages run in parallel, one thread each (default: the preset's)")
    p.add_argument("--world", nargs="*", default=[], metavar="KEY=VALUE", help="WorldConfig overrides, e.g. surfaces=1")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="preset overrides (YAML values), e.g. rlvr_steps=40 'lr_grid=[3e-4, 3e-3]'")
    p.add_argument("--dry_run", action="store_true", help="print each stage (done or not, dependencies, command); run nothing")
    a = p.parse_args(args)

    def pairs(items: list[str], flag: str) -> dict:
        out = {}
        for item in items:
            key, sep, value = item.partition("=")
            if not sep:
                raise Ra3Error(f"{flag} takes KEY=VALUE pairs, got {item!r}")
            out[key] = __import__("yaml").safe_load(value)
        return out

    study = Study(a.out, a.preset, a.bases, a.jobs, a.first_seed, pairs(a.world, "--world"), pairs(a.set, "--set"))
    if a.dry_run:
        print("\n".join(study.plan()))
        return
    study.run()
    print(open(Path(a.out) / "report.md").read())
    print(f"ra3 study: report {Path(a.out) / 'report.md'}, results {Path(a.out) / 'results.json'}")


def _consolidate(args: list[str]) -> None:
    from ra3.consolidate import main

    main(args)


def _data(args: list[str]) -> None:
    import argparse

    from ra3.dataprep import Filters, run

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
        from ra3.config_docs import document, undocumented

        if a.check:
            bare = undocumented(path)
            if bare:
                raise Ra3Error(f"{path}: keys without a comment: {', '.join(bare)} "
                               f"(`ra3 config document {a.name} --write` adds them)")
            print(f"ra3 config: every key of {path} is documented")
            return
        text, missing = document(path)
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


COMMANDS = {"world": _world, "evaluate": _evaluate, "em": _em, "quickstart": _quickstart, "study": _study, "config": _config, "data": _data,
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
