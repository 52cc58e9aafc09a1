"""TFDS builder `clotho` (`tfds build tfds_builders/clotho`)."""
