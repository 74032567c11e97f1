"""Hyper-parameter search over whole runs: the `--search` grammar, the tuner and the
distributed search's chief."""
