"""Fixtures made by tests themselves: tiny models, synthetic audio, tiny datasets in the real layouts."""
