"""Measures of a trained model: validation likelihood (NELBO, bits/char), generation quality, script consistency."""
