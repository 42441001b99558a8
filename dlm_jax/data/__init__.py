"""Tokenizers, corpus resolution and the Grain input pipeline."""
