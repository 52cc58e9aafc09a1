"""TFDS builders: prepared AudioFolders -> ArrayRecord log-mel records (see docs/pipeline.md).

One directory per dataset, as `tfds build tfds_builders/<name>` expects: `clotho`, `audiocaps`,
`audioset_small`. The shared machinery is `audiocap_jax.data.features.AudioFolderBuilder`; build from Python
with `audiocap_jax.data.features.build(name, manual_dir=..., data_dir=...)`.
"""
