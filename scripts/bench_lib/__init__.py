"""Helpers for scripts/bench.py: corpus, services, load generators and the report."""
