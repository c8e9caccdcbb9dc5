"""Benchmarks (`cloudtutor bench SUITE`): each writes JSON and a markdown table."""
