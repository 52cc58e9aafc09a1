"""Corpus-scale captioning: predict's work list and input stream, and its per-process output shards."""
