"""Experiments built on the stages: the demo (and, in time, compare and repro)."""
