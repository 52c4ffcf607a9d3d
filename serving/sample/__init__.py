"""Sampling: per-row parameters, per-slot tables on the device, the jitted sampler and logprobs."""
