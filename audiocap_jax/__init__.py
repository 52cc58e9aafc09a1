"""audiocap-jax: automated audio captioning with Whisper in JAX/Flax."""

__version__ = "0.1.0"
