"""How well can the E-step's reward tell a right thought from a wrong one? (A diagnostic for RA3 on the skill world.)

The E-step rewards an annotation by the log-likelihood of the expert lines given its thoughts. This scores, on
programs of a split (default ``val.jsonl``: never the evaluation set) annotated with the world's thoughts, the
log-likelihood of the *block a thought governs* (its lines up to the next thought) when that thought is

- ``right``: the world's;
- ``wrong_number``: the same words with another number (numbered steps only: ``add 7`` -> ``add 9``);
- ``wrong_routine``: another thought of the same category (seeded draw from the split's thoughts);
- ``none``: left out.

Prints per category (routine / plain step / numbered step) the mean log-likelihood margin of the right thought
over each alternative (nats, over the block) and how often the right one scores higher. A margin near 0 on
numbered steps says the reward barely sees a wrong number, so the E-step cannot learn to write the right one::

    python benchmarks/thought_sensitivity.py --model STUDY/b100/base --world STUDY/world
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import sys
from pathlib import Path

import torch

from ra3.data.segments import Segment, encode_segments, indentation, program_segments, thought_segment
from ra3.evaluation.metrics import THOUGHT_CATEGORIES, thought_category, true_thought_lines


def annotated(row: dict, thoughts: dict[int, str | None]) -> tuple[list[Segment], dict[int, list[int]]]:
    """Segments of ``row`` with ``thoughts[k]`` before its k-th true boundary (None: no thought), and each k's block
    (the indices of the code segments it governs)."""
    segs = program_segments(prompt=row["prompt"], completion=row["completion"])
    n_prompt = sum(s.kind == "prompt" for s in segs)
    starts = true_thought_lines(row)
    code = segs[n_prompt:]
    out, blocks = list(segs[:n_prompt]), {}
    for i, seg in enumerate(code):
        if i in starts:
            k = starts.index(i)
            if thoughts.get(k) is not None:
                out.append(thought_segment(thoughts[k], indentation(seg.text)))
        for k, s in enumerate(starts):
            end = starts[k + 1] if k + 1 < len(starts) else len(code)
            if s <= i < end:
                blocks.setdefault(k, []).append(len(out))
        out.append(seg)
    return out, blocks


def block_logliks(model, tok, items: list[tuple[list[Segment], list[int]]], batch: int = 32) -> list[float]:
    """Sum of token log-probs over the given segments of each annotated program."""
    encoded = []
    for segs, block in items:
        ids = [tok.bos_token_id] if tok.bos_token_id is not None else []
        spans = []
        for seg in segs:
            seg_ids, _ = encode_segments(tok, [seg], bos=False, eos=False)
            spans.append((len(ids), len(ids) + len(seg_ids)))
            ids += seg_ids
        encoded.append((ids, [spans[j] for j in block]))
    out = []
    for i in range(0, len(encoded), batch):
        chunk = encoded[i:i + batch]
        width = max(len(ids) for ids, _ in chunk)
        x = torch.full((len(chunk), width), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(x)
        for j, (ids, _) in enumerate(chunk):
            x[j, :len(ids)], mask[j, :len(ids)] = torch.tensor(ids), 1
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=x, attention_mask=mask).logits.float(), -1)
        token = logp[:, :-1].gather(-1, x[:, 1:, None])[..., 0]  # token t+1's log-prob at position t
        for j, (_, spans) in enumerate(chunk):
            out.append(sum(float(token[j, a - 1:b - 1].sum()) for a, b in spans))
    return out


def other_number(intent: str) -> str:
    return re.sub(r"\d+", lambda m: str(int(m.group()) + 2), intent)


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="the scoring model (the E-step starts from the base)")
    p.add_argument("--world", required=True, help="a skill world folder (routine thoughts)")
    p.add_argument("--split", default="val.jsonl")
    p.add_argument("--limit", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the results here")
    a = p.parse_args(argv)
    from ra3.hf import load_causal_lm, load_tokenizer

    torch.set_num_threads(max(1, torch.get_num_threads()))
    tok, model = load_tokenizer(a.model), load_causal_lm(a.model).eval()
    rows = [json.loads(line) for line in open(Path(a.world) / a.split)][: a.limit]
    rng = random.Random(a.seed)
    pool: dict[str, list[str]] = {c: [] for c in THOUGHT_CATEGORIES}
    for r in rows:
        for intent, macro in zip(r["intents"], r.get("macros") or [""] * len(r["intents"])):
            pool[thought_category(intent, macro)].append(intent)
    items, keys = [], []  # keys: (category, variant)
    for r in rows:
        right = dict(enumerate(r["intents"]))
        for k, (intent, macro) in enumerate(zip(r["intents"], r.get("macros") or [""] * len(r["intents"]))):
            cat = thought_category(intent, macro)
            variants = {"right": intent, "none": None,
                        "wrong_routine": rng.choice([x for x in pool[cat] if x != intent] or [intent])}
            if cat == "numbered_step":
                variants["wrong_number"] = other_number(intent)
            for name, text in variants.items():
                segs, blocks = annotated(r, {**right, k: text})
                items.append((segs, blocks[k]))
                keys.append((cat, name, len(keys) - list(variants).index(name)))
    scores = block_logliks(model, tok, items)
    margins: dict[tuple[str, str], list[float]] = {}
    for (cat, name, first), score in zip(keys, scores):
        if name != "right":
            margins.setdefault((cat, name), []).append(scores[first] - score)
    res = {f"{cat}/{name}": {"n": len(m), "margin_nats": statistics.fmean(m), "right_higher": sum(x > 0 for x in m) / len(m)}
           for (cat, name), m in sorted(margins.items())}
    print(f"{'category':>14} | {'alternative':>13} | n | right − alternative (nats, block) | right scores higher")
    for key, r in res.items():
        cat, name = key.split("/")
        print(f"{cat:>14} | {name:>13} | {r['n']} | {r['margin_nats']:+.2f} | {100 * r['right_higher']:.0f} %")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
