"""Benchmarks: the app beside the reference tools, run on loopback, printing ratios."""
