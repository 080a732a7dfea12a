"""Helpers of ``benchmarks/run.py``: the per-engine worker, the eager model, the LiteRT venv, the report.

Kept apart from ``tvm_unify`` on purpose: the benchmark drives tvm-unify only through its CLI and the
files it writes, so it keeps working while the package's internals move.
"""
