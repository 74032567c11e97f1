"""Export tools: SavedModels from checkpoints, TF Serving configuration."""
