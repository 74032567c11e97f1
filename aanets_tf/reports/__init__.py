"""Results people read: a run's metrics.json and plots, and tables over many runs' workdirs."""
