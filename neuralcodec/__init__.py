"""neuralcodec: a neural video codec built on a causal LFQ video tokenizer (MAGVIT-v2)."""

__version__ = "0.1.0"
