"""A run directory (workdir): its files, checkpoints, the model built from them, the train step, metrics."""
