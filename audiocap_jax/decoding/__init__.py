"""Decoding: the search core, its settings, the host loop around it, and the rerankers."""
