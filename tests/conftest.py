import os

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TINY_LLAMA = {
    "model_type": "llama",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
}


@pytest.fixture(scope="session")
def world_dir(tmp_path_factory):
    """A small skill world (all four splits) with its BPE tokenizer in ``<dir>/tokenizer``."""
    from ra3.datamodules.skillworld import WorldConfig, build_world
    from ra3.datamodules.tokenizer import train_bpe_tokenizer

    out = tmp_path_factory.mktemp("world")
    paths = build_world(out, WorldConfig(seed=0, n_pretrain=600, n_midtrain=200, n_rl=60, n_eval=40))
    train_bpe_tokenizer([paths["pretrain"]], out / "tokenizer", vocab_size=512)
    return out


@pytest.fixture(scope="session")
def tokenizer(world_dir):
    from ra3.modules.policy import load_tokenizer

    return load_tokenizer(str(world_dir / "tokenizer"))


@pytest.fixture(scope="session")
def tiny_model_dir(world_dir, tmp_path_factory):
    """A randomly initialised tiny Llama with the world's tokenizer, exported with save_pretrained."""
    from ra3.modules.policy import PolicyModule

    out = tmp_path_factory.mktemp("tiny_model")
    PolicyModule(tokenizer=str(world_dir / "tokenizer"), model_config=TINY_LLAMA).export(out)
    return out
