"""Fitting one phase: the two-level learner, mixed precision and the phase's progress bar."""
