"""AANets (Adaptive Aggregation Networks) for class-incremental learning, in Keras 3."""
