"""Scheduling: which tokens of which requests run each step, and the KV pages they occupy."""
