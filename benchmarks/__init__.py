"""Benchmarks: load generator and the server chains it measures. Not installed."""
