"""Fake upstreams that are real servers, and the proxy run for tests."""
