"""TFDS builder `audiocaps` (`tfds build tfds_builders/audiocaps`)."""
