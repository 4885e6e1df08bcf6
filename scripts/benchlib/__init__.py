"""The modules of scripts/bench.py (see its docstring for how it measures)."""
