"""The in-sandbox harness's own JSON writer and reader (it never imports json)."""

import pytest
def test_the_harness_json_writer_and_reader_match_the_json_module():
    """The harness writes its records and output digests with its own writer (no `import json` at start-up): byte
    for byte what ``json.dumps(..., separators=(",", ":"))`` gives, so digests cached by earlier runs still match;
    and reads its job with json's C scanner."""
    import json
    import random

    from ra3.execution import harness

    gen = random.Random(0)
    values = [None, True, False, 0, -5, 2**60, -0.0, 1e300, 1 / 3, float("nan"), float("-inf"), "",
              "q\"b\\s\n\t\u00e9\u2603\U0001F600\x00", [1, [2, [3, "x"]]], {"k": {"n": [True, None]}}, [], {},
              harness.encode({(1, 2): {3.5, "a"}, "x": [complex(1, 2), float("inf"), 2**70]})]
    values += [gen.random() * 10 ** gen.randint(-300, 300) for _ in range(500)]
    for v in values:
        assert harness._dumps(v) == json.dumps(v, separators=(",", ":"))
        if v == v:
            assert harness._loads(json.dumps(v)) == v
    with pytest.raises(TypeError):
        harness._dumps(object())
