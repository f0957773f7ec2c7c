"""Benchmarks: each module has ``run(quick: bool) -> dict`` and prints ratios measured side by side."""
