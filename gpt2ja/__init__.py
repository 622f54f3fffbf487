"""gpt2ja: a reproducible pipeline that trains Japanese GPT-2 models."""

__version__ = "0.1.0"
