"""Sampling throughput: ``RaggedEngine`` (continuous batching; eager and ``compile=True``) vs ``model.generate`` (``HFEngine``, dynamic and static
KV cache), same model, prompts, seeds and slot/batch size, in one run, rounds interleaved.

The setting of the skill-world evaluations (``ra3 evaluate`` in the study and the quickstart): the held-out
prompts, 2 samples each at temperature 0.8, 200 new tokens at most, the benchmark's stop strings. The model is a
skill-world base: ``--model DIR`` (e.g. a study's ``b0/ntp``, with ``--prompts DIR/../world/eval.jsonl``), or a tiny
Llama pre-trained here for ``--pretrain_steps`` (random weights rarely stop early, which hides what continuous
batching buys). Prints the completion-length distribution, new tokens/s and completions/s of each sampler, the
paired ratios, whether the samplers produced the same completions, and the compiled engine's warm-up (its compile).

    python benchmarks/sampling.py [--model DIR --prompts FILE] [--n 2] [--max_new_tokens 200] [--batch 64] [--threads 2]
    # RLVR's shape (benchmarks/rlvr_throughput.py): 8 prompts x 4 samples, 64 tokens, T 1, no stop strings
    python benchmarks/sampling.py --limit 8 --n 4 --batch 32 --max_new_tokens 64 --temperature 1 --stop --repeats 30
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

from ra3.data.skillworld import skillworld_model_config  # noqa: E402

TINY = skillworld_model_config(max_position_embeddings=1024)
STOP = ["\ndef ", "\nclass ", "\nprint(", "\nassert"]  # the skill-world benchmark's stop strings
EAGER, COMPILED = "RaggedEngine (continuous batching)", "RaggedEngine, compiled steps"  # the samplers' names
DYNAMIC, STATIC = "generate, dynamic cache (HFEngine)", "generate, static cache"


def pretrained_base(root: Path, steps: int):
    """A tiny Llama trained ``steps`` M-step steps on the skill world's pre-training split; (model, tokenizer, world dir)."""
    import lightning as L

    from ra3.data import CodeDataModule
    from ra3.data.skillworld import WorldConfig, build_world
    from ra3.data.tokenizer import train_bpe_tokenizer
    from ra3.em import MStepModule

    paths = build_world(root / "world", WorldConfig(n_pretrain=4000, n_midtrain=10, n_rl=400, n_eval=200))
    train_bpe_tokenizer([paths["pretrain"]], root / "tokenizer")
    module = MStepModule(tokenizer=str(root / "tokenizer"), model_config=TINY, learning_rate=2e-3, warmup_steps=20)
    if steps:
        data = CodeDataModule(train_files=[str(paths["pretrain"])], max_length=512, batch_size=8)
        data.connect(tokenizer=module.tokenizer, view=module.data_view)
        L.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                  enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0).fit(module, data)
    return module.model.eval(), module.tokenizer, root / "world"


def main() -> None:
    from ra3.rollout.hf_engine import HFEngine
    from ra3.rollout.sampling import SamplingConfig, sample_seed
    from ra3.rollout.ragged_engine import RaggedEngine

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="a skill-world base (default: pre-train one here)")
    ap.add_argument("--prompts", help="a skill-world split (.jsonl) whose prompts are sampled (default: the eval split)")
    ap.add_argument("--pretrain_steps", type=int, default=300)
    ap.add_argument("--limit", type=int, default=200, help="prompts at most")
    ap.add_argument("--n", type=int, default=2, help="samples per prompt")
    ap.add_argument("--max_new_tokens", type=int, default=200)
    ap.add_argument("--batch", type=int, default=64, help="slots of RaggedEngine = batch size of generate")
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--stop", nargs="*", default=STOP, help="stop strings (none: every row runs to EOS or the cap, as "
                    "in benchmarks/rlvr_throughput.py)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as root:
        if args.model:
            from ra3.hf import load_causal_lm, load_tokenizer

            model, tok, world = load_causal_lm(args.model).eval(), load_tokenizer(args.model), None
            origin = args.model
        else:
            model, tok, world = pretrained_base(Path(root), args.pretrain_steps)
            origin = f"tiny Llama pre-trained {args.pretrain_steps} steps here"
        source = args.prompts or (world / "eval.jsonl" if world else None)
        if source is None:
            ap.error("--model needs --prompts (a skill-world split, e.g. the study's world/eval.jsonl)")
        rows = [json.loads(line) for line in open(source)]
    model = model.to(args.device)
    setup_s = time.perf_counter() - t0
    prompts = [r["prompt"] for r in rows[: args.limit]]
    seeds = [sample_seed(p, 0) for p in prompts]
    config = SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, stop=args.stop, batch_size=args.batch)
    samplers = {
        EAGER: RaggedEngine(model, tok, slots=args.batch),
        COMPILED: RaggedEngine(model, tok, slots=args.batch, compile=True),
        DYNAMIC: HFEngine(model, tok),
        STATIC: HFEngine(model, tok, cache_implementation="static"),
    }
    outputs, rates = {}, {name: [] for name in samplers}
    warmup = {}
    # warm-up: 2 more rows than slots, 8 tokens each, so a step also prefills (the compiled engine compiles both graphs)
    warm = (prompts * (args.batch // max(1, len(prompts)) + 2))[: args.batch + 2]
    warm_config = SamplingConfig(max_new_tokens=8, temperature=args.temperature, stop=args.stop, batch_size=args.batch)
    for name, engine in samplers.items():
        t = time.perf_counter()
        engine.generate(warm, 1, warm_config, seeds=[sample_seed(p, 1) for p in warm])
        warmup[name] = time.perf_counter() - t
    for _ in range(args.repeats):  # interleaved: drift in machine speed hits every sampler alike
        for name, engine in samplers.items():
            t = time.perf_counter()
            out = engine.generate(prompts, args.n, config, seeds=seeds)
            dt = time.perf_counter() - t
            outputs[name] = out
            n_tokens = sum(len(c.token_ids) + (1 if c.ended_by_eos else 0) for cs in out for c in cs)
            rates[name].append((n_tokens / dt, len(prompts) * args.n / dt, dt))
    ours = outputs[EAGER]
    lengths = sorted(len(c.token_ids) for cs in ours for c in cs)
    capped = sum(not c.finished for cs in ours for c in cs)
    print(f"model: {origin} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters; setup {setup_s:.0f} s); "
          f"{len(prompts)} prompts x {args.n} samples, slots/batch {args.batch}, "
          f"max_new_tokens {args.max_new_tokens}, temperature {args.temperature}, stop strings {args.stop}, threads {args.threads}, "
          f"device {args.device}")
    print(f"completion lengths (tokens): min {lengths[0]}, median {statistics.median(lengths):.0f}, mean "
          f"{statistics.mean(lengths):.1f}, p90 {lengths[int(0.9 * (len(lengths) - 1))]}, max {lengths[-1]}; "
          f"{capped} of {len(lengths)} hit the cap")
    best = {name: max(r, key=lambda x: x[0]) for name, r in rates.items()}
    for name, (tps, cps, dt) in best.items():
        print(f"{name:<38}: {tps:9.0f} new tokens/s  {cps:7.2f} completions/s  (best {dt:.2f} s of {args.repeats}; "
              f"warm-up {warmup[name]:.1f} s)")
    for ours_name in (EAGER, COMPILED):
        for base in (DYNAMIC, STATIC):
            # paired by round: machine-speed drift (seen here: +-20 % between runs) hits both sides of a ratio alike
            ratios = sorted(o[0] / b[0] for o, b in zip(rates[ours_name], rates[base]))
            q = statistics.quantiles(ratios, n=4) if len(ratios) > 7 else None
            spread = f"quartiles {q[0]:.2f}-{q[2]:.2f}, range {ratios[0]:.2f}-{ratios[-1]:.2f}" if q else \
                f"rounds: {', '.join(f'{r:.2f}' for r in ratios)}"
            print(f"{ours_name} / {base}: median x{statistics.median(ratios):.2f} ({spread})")
    st = samplers[EAGER].stats
    print(f"RaggedEngine: {st['steps']} steps = packed forwards (new rows' prompts ride with the decoding rows), "
          f"{st['decoded_tokens']} tokens decoded, {st['prefill_tokens']} prompt tokens")
    compiled = sorted(c[0] / e[0] for c, e in zip(rates[COMPILED], rates[EAGER]))
    print(f"compiled / eager RaggedEngine: median x{statistics.median(compiled):.2f} (range {compiled[0]:.2f}-{compiled[-1]:.2f}); "
          f"compiled steps {samplers['RaggedEngine, compiled steps'].stats['compiled_steps']} of {st['steps']}")
    for name in (EAGER, COMPILED):
        same = sum(a.token_ids == b.token_ids for xs, ys in zip(outputs[name], outputs[DYNAMIC])
                   for a, b in zip(xs, ys))
        print(f"{name}: the same completions as generate (dynamic cache) for {same} of {len(lengths)}")


if __name__ == "__main__":
    main()
