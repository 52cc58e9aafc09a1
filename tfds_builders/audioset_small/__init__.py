"""TFDS builder `audioset_small` (`tfds build tfds_builders/audioset_small`)."""
