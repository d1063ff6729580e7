"""Benchmarks: commands that print and save figures, with baselines measured in the same run."""
