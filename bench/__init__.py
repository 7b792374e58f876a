"""Benchmarks: campaignd measured against the bare parts of this machine.

Each module is runnable alone (`python -m bench.rate`) and prints one JSON object on
stdout and a human summary on stderr; `python -m bench all [--smoke]` runs them all.
See docs/bench.md.
"""
