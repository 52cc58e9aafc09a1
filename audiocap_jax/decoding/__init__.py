"""Decoding: the search core and its settings, the logits processors, the Whisper binding, the host loop
around them, and the rerankers."""
