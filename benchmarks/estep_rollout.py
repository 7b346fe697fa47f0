"""E-step rollout throughput: ``LatentRolloutEngine`` vs (a) a naive loop that calls ``model.generate`` once per
line boundary (re-encoding the whole prefix each time) and (b) plain ``model.generate`` of the same number
of tokens (default dynamic KV cache, as a user calls it; also shown with a preallocated static cache). All in one
run, same model, same programs, same thread count; best of ``--repeats`` interleaved timings after a warm-up.

    python benchmarks/estep_rollout.py [--programs 16] [--group_size 4] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from ra3.data.skillworld import WorldConfig, build_world
from ra3.data.tokenizer import train_bpe_tokenizer
from ra3.policy.module import PolicyModule
from ra3.em.latent import LatentConfig, LatentRolloutEngine, program_from_row

from ra3.data.skillworld import skillworld_model_config  # noqa: E402

TINY = skillworld_model_config(max_position_embeddings=1024)


@torch.no_grad()
def naive_rollout(model, tok, engine, programs, config, generator) -> int:
    """One ``generate`` call per line boundary for all rows; returns the number of tokens produced."""
    rows = [p for p in programs for _ in range(config.group_size)]
    seqs = [[tok.bos_token_id] + [i for s in p.context for i in engine._encode(s.text)] for p in rows]
    for t in range(max(len(p.lines) for p in rows)):
        active = [r for r, p in enumerate(rows) if t < len(p.lines)]
        width = max(len(seqs[r]) for r in active)
        ids = torch.full((len(active), width), tok.pad_token_id)
        mask = torch.zeros((len(active), width), dtype=torch.long)
        for i, r in enumerate(active):
            ids[i, width - len(seqs[r]):] = torch.tensor(seqs[r])
            mask[i, width - len(seqs[r]):] = 1
        out = model.generate(input_ids=ids.to(model.device), attention_mask=mask.to(model.device),
                             max_new_tokens=config.max_thought_tokens, do_sample=True,
                             top_k=0, pad_token_id=tok.pad_token_id, output_scores=True, return_dict_in_generate=True)
        first = torch.log_softmax(out.scores[0].float(), -1).cpu()
        for i, r in enumerate(active):
            line = engine._line(rows[r].lines[t])
            if line.marker:
                p = (1 - config.alpha) * torch.sigmoid(first[i, line.marker[0]] - first[i, line.ids[line.prefix]])
                if torch.rand((), generator=generator) < p:
                    new = out.sequences[i, width:].tolist()
                    cut = next((j for j, x in enumerate(new) if engine.thought_end[x]), len(new))
                    seqs[r] += line.ids[: line.prefix] + line.marker + new[:cut]
            seqs[r] += line.ids
    return sum(len(s) + 1 for s in seqs)


def compare(model, tok, programs, group_size: int, alpha: float, lookahead: int, repeats: int, naive: bool = True) -> dict:
    """tokens/s of the latent rollout, (a) the per-line ``generate`` loop (if ``naive``), (b) plain ``generate`` of the
    same number of tokens with a dynamic and a static cache; best of ``repeats`` interleaved timings after a warm-up.
    ``model`` may sit on any device."""
    device = next(model.parameters()).device
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    engine = LatentRolloutEngine(model, tok)
    config = LatentConfig(group_size=group_size, max_thought_tokens=12, alpha=alpha, lookahead=lookahead)

    def ours():
        ro = engine.rollout(programs, config, torch.Generator().manual_seed(0))
        ours.rollout = ro
        return int(ro.attention_mask.sum())

    n_tokens = ours()  # warm-up; sets the token count plain generate has to match
    ro = ours.rollout
    prompts = [[tok.bos_token_id] + engine._encode("".join(s.text for s in p.context)) for p in programs for _ in range(group_size)]
    new_per_row = (n_tokens - sum(map(len, prompts))) // ro.input_ids.shape[0]
    width = max(map(len, prompts))
    ids = torch.full((len(prompts), width), tok.pad_token_id)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    ids, mask = ids.to(device), mask.to(device)

    def plain(**cache):
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_per_row, min_new_tokens=new_per_row,
                                 do_sample=True, top_k=0, pad_token_id=tok.pad_token_id, **cache)
        return int(mask.sum()) + (out.shape[1] - width) * len(prompts)

    runs = {"ours": ours, "plain": plain, "static": lambda: plain(cache_implementation="static")}
    if naive:
        runs["naive"] = lambda: naive_rollout(model, tok, engine, programs, config, torch.Generator().manual_seed(0))
    for name, fn in runs.items():
        if name != "ours":
            fn()  # warm-up
    rates = {name: [] for name in runs}
    for _ in range(repeats):  # interleaved, so drift in machine speed hits every method alike
        for name, fn in runs.items():
            sync()
            t = time.perf_counter()
            n = fn()
            sync()
            rates[name].append(n / (time.perf_counter() - t))
    best = {name: max(r) for name, r in rates.items()}
    result = {"rows": ro.input_ids.shape[0], "tokens_per_rollout": n_tokens, "thoughts": int(ro.n_thoughts.sum()),
              "tokens_per_s": best, "ratio_b_plain": best["ours"] / best["plain"], "ratio_b_static": best["ours"] / best["static"]}
    if naive:
        result["ratio_a_naive"] = best["ours"] / best["naive"]
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--programs", type=int, default=16)
    ap.add_argument("--group_size", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--alpha", type=float, default=0.0,
                    help="prior on 'no thought': 0 = the random-init policy thinks at ~half the boundaries (worst case)")
    ap.add_argument("--lookahead", type=int, default=LatentConfig.lookahead, help="expert lines fed ahead of the decisions (1 = off)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as root:
        paths = build_world(Path(root), WorldConfig(n_pretrain=1000, n_midtrain=args.programs, n_rl=1, n_eval=1))
        train_bpe_tokenizer([paths["pretrain"]], Path(root) / "tok")
        policy = PolicyModule(tokenizer=str(Path(root) / "tok"), model_config=TINY)
        rows = [json.loads(l) for l in open(paths["midtrain"])]
    r = compare(policy.model.eval(), policy.tokenizer, [program_from_row(row) for row in rows], args.group_size, args.alpha,
                args.lookahead, args.repeats)
    rate = r["tokens_per_s"]
    print(f"rows={r['rows']} ({args.programs} programs x G={args.group_size}), tokens/rollout={r['tokens_per_rollout']}, "
          f"thoughts={r['thoughts']}, alpha={args.alpha}, lookahead={args.lookahead}, threads={args.threads}")
    print(f"LatentRolloutEngine            : {rate['ours']:9.0f} tokens/s")
    print(f"(a) generate per line boundary : {rate['naive']:9.0f} tokens/s   ratio {r['ratio_a_naive']:.2f}x (target >= 1.5x)")
    print(f"(b) plain generate, same tokens: {rate['plain']:9.0f} tokens/s   ratio {r['ratio_b_plain']:.2f}x (target >= 0.8x)")
    print(f"    the same with a static cache : {rate['static']:9.0f} tokens/s   ratio {r['ratio_b_static']:.2f}x")


if __name__ == "__main__":
    main()
