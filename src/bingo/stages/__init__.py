"""The stages a user runs, one module each: a function from a Config and a run folder to its artifact.

Each declares the settings that define its artifact (bingo.store); the experiments (bingo.experiments)
are built on them.
"""
