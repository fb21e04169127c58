"""Benchmarks (`make bench`); the figures and how they were measured are in RESULTS.md."""
