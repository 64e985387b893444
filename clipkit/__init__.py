"""clipkit: embedding, retrieval and fine-tuning toolkit for CLIP models."""

__version__ = "0.1.0"
