"""The class-incremental run and what it keeps between phases: the phase loop, the steps of
one phase, checkpoints, exemplars, evaluation, resuming, growth and exports from a workdir."""
