"""ra3: RA3 mid-training (Reasoning as Action Abstractions) and RLVR for code LLMs, on PyTorch Lightning."""

__version__ = "0.2.0"
