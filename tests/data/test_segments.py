import json

from ra3.data.segments import (
    KIND_IDS,
    encode_segments,
    indentation,
    program_segments,
    split_lines,
    thought_segment,
)


def test_split_lines_round_trips_and_attaches_newline_to_the_front():
    text = "def f(x):\n    y = x\n\n        z = 1\n    return y"
    parts = split_lines(text)
    assert parts == ["def f(x):", "\n    y = x", "\n", "\n        z = 1", "\n    return y"]
    assert "".join(parts) == text
    assert split_lines("\nx") == ["\nx"]
    assert indentation("\n        z = 1") == " " * 8


def test_per_segment_tokenization_equals_whole_text_tokenization(world_dir, tokenizer):
    rows = [json.loads(l) for l in open(world_dir / "midtrain.jsonl")][:50]
    for row in rows:
        ids, kinds = encode_segments(tokenizer, program_segments(prompt=row["prompt"], completion=row["completion"]), bos=False, eos=False)
        assert ids == tokenizer(row["text"], add_special_tokens=False)["input_ids"]
        assert len(kinds) == len(ids)


def test_kinds_mark_prompt_code_and_comment_lines(tokenizer):
    segs = program_segments(prompt='def solve(xs):\n    """Doc."""', completion="\n    # square\n    xs = [x * x for x in xs]\n    return xs")
    assert [s.kind for s in segs] == ["prompt", "prompt", "thought", "code", "code"]
    ids, kinds = encode_segments(tokenizer, segs)
    assert kinds[0] == -1 and ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    n_thought = len(tokenizer("\n    # square", add_special_tokens=False)["input_ids"])
    assert kinds.count(KIND_IDS["thought"]) == n_thought


def test_inserting_a_thought_does_not_change_neighbouring_tokens(tokenizer):
    segs = program_segments(text="def solve(xs):\n    xs = list(xs)\n    return xs")
    base, _ = encode_segments(tokenizer, segs, bos=False, eos=False)
    thought = thought_segment("copy  the\nlist", indentation(segs[1].text))
    assert thought.text == "\n    # copy the list"
    with_thought, _ = encode_segments(tokenizer, [segs[0], thought, *segs[1:]], bos=False, eos=False)
    head, _ = encode_segments(tokenizer, segs[:1], bos=False, eos=False)
    tail, _ = encode_segments(tokenizer, segs[1:], bos=False, eos=False)
    assert with_thought[: len(head)] == head and with_thought[-len(tail):] == tail
    assert base == head + tail
