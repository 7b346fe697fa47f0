import os
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def installed_wheel(tmp_path_factory):
    """ra3 built as a wheel and installed into a fresh virtual environment (no checkout on its path, no network).

    Returns ``run(*args, cwd, timeout=600, check=True)`` for the venv's ``ra3`` script and ``python``/``venv`` paths.
    The installed dependencies are reused: their folders go on the venv's ``sys.path`` *after* its own, as plain
    paths, so the checkout's editable-install hook (a ``.pth``) is not run and ``ra3`` comes from the wheel.
    """
    import site
    import subprocess
    import sys
    from types import SimpleNamespace

    tmp = tmp_path_factory.mktemp("wheel")
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp / "dist"),
                    str(root)], check=True, capture_output=True, timeout=300)
    wheel = next((tmp / "dist").glob("ra3-*.whl"))
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], check=True,
                             capture_output=True, text=True).stdout.strip()
    Path(purelib, "_deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--ignore-installed", str(wheel)],
                   check=True, capture_output=True, timeout=300)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    return SimpleNamespace(venv=venv, python=py, ra3=venv / "bin" / "ra3", env=env)


def _shared_data_dir() -> Path | None:
    """HumanEval / MBPP+ files: $RA3_SHARED_DATA, else ../shared/data beside the checkout (or above it)."""
    repo = Path(__file__).resolve().parents[1]
    candidates = [os.environ.get("RA3_SHARED_DATA"), repo / "shared" / "data", *(p / "shared" / "data" for p in repo.parents)]
    for c in filter(None, candidates):
        if (Path(c) / "HumanEval.jsonl.gz").exists():
            return Path(c)
    return None


SHARED_DATA = _shared_data_dir()


@pytest.fixture
def shared_data():
    if SHARED_DATA is None:
        pytest.skip("benchmark data not found: set RA3_SHARED_DATA to the folder with HumanEval.jsonl.gz")
    return SHARED_DATA


def spawn_on_two_gloo_ranks(worker, *args) -> None:
    """``worker(rank, port, *args)`` in 2 spawned processes that join one gloo group on a free local port; each
    worker ends with :func:`leave_gloo_group`."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(worker, args=(port, *args), nprocs=2, join=True)


def leave_gloo_group() -> None:
    """Barrier, destroy the group, and exit without interpreter teardown: freeing tensors at exit while gloo's
    threads are still joinable aborts a rank now and then ("terminate called without an active exception"; 1 run in
    ~18 of the sharded-generation test)."""
    import torch.distributed as dist

    dist.barrier()
    dist.destroy_process_group()
    os._exit(0)


TINY_LLAMA = {
    "model_type": "llama",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
}


# Dimensions a real model has (multiples of 64): bitsandbytes' CPU 4-bit kernel needs in_features % 64 == 0 and
# out_features % 32 == 0 (k/v projections: 2 heads x 16 = 32).
QUANTIZABLE_LLAMA = {**TINY_LLAMA, "hidden_size": 64, "intermediate_size": 128}


@pytest.fixture(scope="session")
def world_dir(tmp_path_factory):
    """A small skill world (all four splits) with its BPE tokenizer in ``<dir>/tokenizer``."""
    from ra3.data.skillworld import WorldConfig, build_world
    from ra3.data.tokenizer import train_bpe_tokenizer

    out = tmp_path_factory.mktemp("world")
    paths = build_world(out, WorldConfig(seed=0, n_pretrain=600, n_midtrain=200, n_rl=60, n_eval=40))
    train_bpe_tokenizer([paths["pretrain"]], out / "tokenizer", vocab_size=512)
    return out


@pytest.fixture(scope="session")
def tokenizer(world_dir):
    from ra3.hf import load_tokenizer

    return load_tokenizer(str(world_dir / "tokenizer"))


@pytest.fixture(scope="session")
def tiny_model_dir(world_dir, tmp_path_factory):
    """A randomly initialised tiny Llama with the world's tokenizer, exported with save_pretrained."""
    from ra3.policy.module import PolicyModule

    out = tmp_path_factory.mktemp("tiny_model")
    PolicyModule(tokenizer=str(world_dir / "tokenizer"), model_config=TINY_LLAMA).export(out)
    return out


@pytest.fixture(scope="session")
def quantizable_model_dir(world_dir, tmp_path_factory):
    """Like ``tiny_model_dir`` with ``QUANTIZABLE_LLAMA``'s shapes (for bitsandbytes 4/8-bit)."""
    from ra3.policy.module import PolicyModule

    out = tmp_path_factory.mktemp("quantizable_model")
    PolicyModule(tokenizer=str(world_dir / "tokenizer"), model_config=QUANTIZABLE_LLAMA).export(out)
    return out
