import json

import pytest

from ra3.data.datamodule import CodeDataModule, TokenCollator, label_mask, pack_best_fit, Example
from ra3.data.segments import encode_segments, program_segments
from ra3.errors import Ra3Error


def _dm(tokenizer, files, **kw):
    dm = CodeDataModule(train_files=[str(f) for f in files], **kw)
    dm.connect(tokenizer)
    return dm


def test_malformed_rows_are_counted_and_reported_once_with_first_row(tmp_path, tokenizer, recwarn):
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join([
        json.dumps({"text": "def f():\n    return 1"}),
        "{not json",
        json.dumps({"prompt": "def g():", "completion": "\n    return 2"}),
        json.dumps({"code": "x"}),
        json.dumps([1, 2]),
    ]) + "\n")
    dm = _dm(tokenizer, [path])
    dm.setup("fit")
    assert len(dm.train_examples) == 2
    messages = [str(w.message) for w in recwarn if "malformed" in str(w.message)]
    assert len(messages) == 1
    assert "skipped 3 malformed row(s)" in messages[0] and "row 2" in messages[0]


def test_malformed_row_is_fatal_when_asked(tmp_path, tokenizer):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"text": "x = 1"}) + "\n" + json.dumps({"text": 5}) + "\n")
    with pytest.raises(Ra3Error, match=r"malformed row 2 in .*'text' must be a non-empty string"):
        _dm(tokenizer, [path], on_malformed="error").setup("fit")


def test_empty_dataset_and_missing_file_are_clear_errors(tmp_path, tokenizer):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(Ra3Error, match="the dataset is empty"):
        _dm(tokenizer, [empty]).setup("fit")
    with pytest.raises(Ra3Error, match="does not exist"):
        _dm(tokenizer, [tmp_path / "nope.jsonl"]).setup("fit")


def test_glob_patterns_read_every_shard_in_order_and_no_match_is_an_error(tmp_path, tokenizer):
    for i in (1, 0):
        (tmp_path / f"midtrain-0000{i}.jsonl").write_text(json.dumps({"text": f"x = {i}"}) + "\n")
    dm = _dm(tokenizer, [tmp_path / "midtrain-*.jsonl"])
    dm.setup("fit")
    assert [tokenizer.decode(e.ids, skip_special_tokens=True).strip() for e in dm.train_examples] == ["x = 0", "x = 1"]
    with pytest.raises(Ra3Error, match=r"no file matches '.*/rl-\*.jsonl'"):
        _dm(tokenizer, [tmp_path / "rl-*.jsonl"]).setup("fit")


def test_local_datasets_directory_is_read(tmp_path, tokenizer):
    import datasets

    datasets.Dataset.from_list([{"text": "def f():\n    return 1"}, {"text": "x = 2"}]).save_to_disk(str(tmp_path / "ds"))
    dm = _dm(tokenizer, [tmp_path / "ds"])
    dm.setup("fit")
    assert len(dm.train_examples) == 2


def test_each_loss_mode_masks_exactly_the_intended_tokens(tokenizer):
    prompt, completion = 'def solve(xs):\n    """Doc."""', "\n    # square\n    xs = [x * x for x in xs]\n    return xs"
    segs = program_segments(prompt=prompt, completion=completion)
    ids, kinds = encode_segments(tokenizer, segs)
    n_prompt = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    n_thought = len(tokenizer("\n    # square", add_special_tokens=False)["input_ids"])
    n = len(ids)
    all_mask, code_mask, completion_mask = (label_mask(kinds, m) for m in ("all", "code_only", "completion_only"))
    assert all_mask == [False] + [True] * (n - 1)  # bos never predicted
    assert code_mask == [False] + [True] * n_prompt + [False] * n_thought + [True] * (n - 1 - n_prompt - n_thought)
    assert completion_mask == [False] * (1 + n_prompt) + [True] * (n - 1 - n_prompt)
    with pytest.raises(Ra3Error, match="loss_mode"):
        label_mask(kinds, "thoughts")


def test_best_fit_packing_respects_capacity_and_uses_every_item():
    lengths = [5, 9, 3, 7, 2, 8, 1, 10, 4]
    rows = pack_best_fit(lengths, 10)
    assert sorted(i for r in rows for i in r) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in r) <= 10 for r in rows)
    assert len(rows) == 5  # 49 tokens: 5 rows is optimal


def test_packed_collator_restarts_positions_and_masks_document_starts():
    a, b = Example([1, 5, 6, 2], [-1, 1, 1, 1]), Example([1, 7, 2], [-1, 1, 1])
    batch = TokenCollator(pad_id=0, loss_mode="all", max_length=10, packing=True)([[a, b]])
    assert batch["input_ids"].tolist() == [[1, 5, 6, 2, 1, 7, 2, 0, 0, 0]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1, 2, 0, 0, 0]]
    assert batch["doc_ids"].tolist() == [[0, 0, 0, 0, 1, 1, 1, -1, -1, -1]]
    assert batch["labels"].tolist() == [[-100, 5, 6, 2, -100, 7, 2, -100, -100, -100]]
    assert batch["tokens"] == 7
    padded = TokenCollator(pad_id=0, loss_mode="all", max_length=10, packing=False)([a, b])
    assert padded["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]


def test_datamodule_packs_rows_to_max_length(world_dir, tokenizer):
    dm = _dm(tokenizer, [world_dir / "midtrain.jsonl"], max_length=256, batch_size=4, val_fraction=0.1)
    dm.setup("fit")
    assert len(dm.val_examples) == 20 and len(dm.train_examples) == 180
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape == (4, 256)
    assert (batch["doc_ids"].max(dim=1).values >= 1).all()  # several programs per row
    assert batch["tokens"] > 0.8 * 4 * 256


def test_program_rows_keep_the_ground_truth_for_scoring(world_dir, tokenizer):
    dm = _dm(tokenizer, [world_dir / "midtrain.jsonl"])
    dm.setup("fit")
    row = dm.train_programs[0]
    assert {"task_id", "boundaries", "skills", "intents"} <= set(row)
    assert len(row["intents"]) == len(row["boundaries"])


def test_rows_are_read_in_setup_and_the_phase_connects_view_and_tokenizer(tmp_path, tokenizer, world_dir):
    """``setup`` reads rows without a tokenizer; ``connect`` picks what is served; missing pieces are one-line errors."""
    dm = CodeDataModule(train_files=[str(world_dir / "midtrain.jsonl")], rl_files=[str(world_dir / "rl.jsonl")],
                        program_batch_size=3, batch_size=2)
    dm.setup("fit")
    assert dm.train_programs and dm.rl_rows
    with pytest.raises(Ra3Error, match=r"needs a tokenizer: set data.tokenizer_path, or hand one in with data.connect"):
        dm.train_dataloader()  # the default view is tokens
    dm.connect(view="programs")
    programs = next(iter(dm.train_dataloader()))
    assert len(programs) == 3 and all({"prompt", "completion", "boundaries"} <= set(p) for p in programs)
    dm.connect(view="prompts")
    prompts = next(iter(dm.train_dataloader()))
    assert len(prompts) == 3 and all("test_cases" in r for r in prompts)
    dm.connect(tokenizer)
    assert next(iter(dm.train_dataloader()))["input_ids"].shape[0] == 2
    with pytest.raises(Ra3Error, match="view must be one of tokens, programs, prompts"):
        dm.connect(tokenizer, view="text")
    only_programs = CodeDataModule(train_files=[str(world_dir / "midtrain.jsonl")])
    only_programs.setup("fit")
    only_programs.connect(view="prompts")
    with pytest.raises(Ra3Error, match="RLVR needs data.rl_files"):
        only_programs.train_dataloader()
    with pytest.raises(Ra3Error, match="needs train_files .* or rl_files"):
        CodeDataModule().setup("fit")


def test_tokenizer_path_wins_over_the_connected_tokenizer(world_dir, tokenizer):
    dm = CodeDataModule(train_files=[str(world_dir / "midtrain.jsonl")], tokenizer_path=str(world_dir / "tokenizer"))
    dm.setup("fit")
    dm.connect(tokenizer)
    dm.train_examples
    assert dm.tokenizer is not tokenizer and dm.tokenizer.name_or_path == str(world_dir / "tokenizer")
