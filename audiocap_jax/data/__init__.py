"""Data: dataset preparation, synthetic demo set, input pipeline."""
