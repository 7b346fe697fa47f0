"""Program <-> line segments <-> token ids: the one segmentation rule every phase uses.

Rule: a program is split at line breaks and the newline is attached to the *front* of the line that
follows it: ``"def f(x):\\n    y = x\\n    return y"`` -> ``["def f(x):", "\\n    y = x", "\\n    return y"]``.
Each segment is tokenized on its own and the ids are concatenated. A byte-level BPE merges a newline
with the next line's indentation, so with this rule (a) a prompt ends *before* its final newline and
generation continues with the same token the model saw in training, and (b) a thought
``"\\n    # <intent>"`` can be inserted between any two segments without re-tokenizing its
neighbours. Rollouts, log-probs, the M-step and generation all go through :func:`encode_segments`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, Sequence

SegmentKind = Literal["prompt", "code", "thought"]
KIND_IDS: dict[str, int] = {"prompt": 0, "code": 1, "thought": 2}
_COMMENT_LINE = re.compile(r"^\s*#")


@dataclass(frozen=True)
class Segment:
    text: str
    kind: SegmentKind


def split_lines(text: str) -> list[str]:
    """``"a\\n  b\\nc"`` -> ``["a", "\\n  b", "\\nc"]``; joining the result gives ``text`` back exactly.

    Only an empty first line produces no segment (``"\\nx"`` -> ``["\\nx"]``).
    """
    if not text:
        return []
    parts = text.split("\n")
    return [s for s in [parts[0]] + ["\n" + p for p in parts[1:]] if s]


def is_comment_line(segment_text: str) -> bool:
    return bool(_COMMENT_LINE.match(segment_text.lstrip("\n")))


def indentation(segment_text: str) -> str:
    line = segment_text.lstrip("\n")
    return line[: len(line) - len(line.lstrip(" \t"))]


def program_segments(text: str | None = None, prompt: str | None = None, completion: str | None = None) -> list[Segment]:
    """Segments of a program given either as ``text`` or as ``prompt`` + ``completion``.

    Whole-line comments in code become ``thought`` segments (so the M-step can mask them);
    everything in ``prompt`` is ``prompt``.
    """
    segments: list[Segment] = []
    if prompt is not None:
        segments += [Segment(s, "prompt") for s in split_lines(prompt)]
        code_parts = split_lines(completion or "")
    else:
        code_parts = split_lines(text or "")
    segments += [Segment(s, "thought" if is_comment_line(s) else "code") for s in code_parts]
    return segments


def thought_segment(thought: str, indent: str) -> Segment:
    """The segment inserted before a line: ``"\\n" + indent + "# " + thought`` (one line, no newline inside)."""
    return Segment("\n" + indent + "# " + " ".join(thought.split()), "thought")


def encode_segments(tokenizer, segments: Sequence[Segment], bos: bool = True, eos: bool = True) -> tuple[list[int], list[int]]:
    """Token ids and a same-length list of segment-kind ids (see ``KIND_IDS``; -1 for bos/eos).

    ``tokenizer`` is any HF tokenizer; each segment is encoded without special tokens.
    """
    ids: list[int] = []
    kinds: list[int] = []
    if bos and tokenizer.bos_token_id is not None:
        ids.append(tokenizer.bos_token_id)
        kinds.append(-1)
    texts = [s.text for s in segments]
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    for seg, seg_ids in zip(segments, encoded):
        ids.extend(seg_ids)
        kinds.extend([KIND_IDS[seg.kind]] * len(seg_ids))
    if eos and tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
        kinds.append(KIND_IDS["code"])  # the model must learn to stop: eos is a code-side token
    return ids, kinds
