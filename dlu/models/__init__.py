"""Flax linen modules. Models never import data, the loop or the entry points."""
