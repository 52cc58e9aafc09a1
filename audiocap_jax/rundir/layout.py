"""The files of a training workdir, each name written once: every module that reads or writes one names it here.

A workdir is what `python -m audiocap_jax.train --workdir=DIR` fills; `predict`, `evaluate --checkpoint` and
`report` read it back. Two different files are called `config.json`: the run's training config (written at
start, read when a resume is refused) and a HF checkpoint's model config (what makes a folder a HF Whisper
directory, such as `hf_export/`); their names below say which is meant. No imports: preflight and the
callers of every stage use the table alike.
"""

RUN_CONFIG_FILE = "config.json"  # the run's full training config, as it started (train.setup)
MODEL_CONFIG_FILE = "model_config.json"  # the model's architecture (HF field names) and LoRA adapters
TOKENIZER_DIR = "tokenizer"  # the run's tokenizer files; with model_config.json, a workdir loads alone
CHECKPOINT_DIR = "checkpoints"  # Orbax: one folder per finished step (rundir/checkpoint.py)
SHARDING_TABLE_FILE = "sharding.txt"  # shape and mesh spec of every parameter
METRICS_FILE = "metrics.jsonl"  # one JSON record per logged step and validation (rundir/writer.py)
SAMPLES_FILE = "samples.jsonl"  # sample captions next to their references, per validation
PLOT_FILE = "metrics.png"  # loss and validation metrics per step (rundir/summary.py)
FINAL_METRICS_FILE = "final_metrics.json"  # the last validation's scores, at the end of a run
PREDICTIONS_DIR = "predictions"  # the final validation's predictions and their scores, per dataset
HF_EXPORT_DIR = "hf_export"  # the best checkpoint as a HF Whisper directory
EVALUATION_DIR = "evaluation"  # `evaluate --checkpoint=WORKDIR`'s outputs unless --output_dir says otherwise
LOCK_FILE = "train.lock"  # held by the one training that writes the workdir (rundir/lock.py)
DATA_DIR = "data"  # data a run makes itself when its config names no folder:
TFDS_DIR = f"{DATA_DIR}/tfds"  # the TFDS builds of the synthetic set
SYNTHETIC_DIR = f"{DATA_DIR}/synthetic"  # the synthetic set's raw layouts and AudioFolders

HF_CONFIG_FILE = "config.json"  # not a workdir's own: a HF checkpoint directory's model config
