"""Checkpoint readers: each turns a file format into HF-named tensors for `weights.load_weights`."""
