"""Benchmarks users can run: `python -m cliprnn bench-speed` and `bench-accuracy`."""
