"""The thought wing's experiment configs (`--config=dlm_jax/proj/thought/configs/small.py:thought`)."""
