"""Shared defaults of every training run; experiment files override only what differs.

The defaults are the original system's (prompteus/audio-captioning, DCASE 2023 task 6a): AdamW with HF/torch
defaults, grad clip 1.0, linear warmup + linear decay, batch 32, max_length 80 tokens counting the 11 forced
ones, greedy validation decoding, best checkpoint by Clotho SPIDEr.

    python -m audiocap_jax.train --config=configs/base.py --workdir=DIR --config.data.data_dir=TFDS_DIR
"""

from __future__ import annotations

import ml_collections

from audiocap_jax.data import synthetic
from audiocap_jax.decoding.search_settings import decoding_keys
from configs.common import parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    arg = parse_arg(arg, variant="tiny", runlocal=False)
    c = ml_collections.ConfigDict()
    c.seed = 42

    # Model. Resume order (train.py): this workdir's latest checkpoint, then init_from (one of our own
    # training workdirs, the original's --load-checkpoint), then hf_checkpoint, then a fresh init of `variant`.
    c.model = ml_collections.ConfigDict()
    c.model.init = "hf"  # "hf" (hf_checkpoint) | "scratch" (random `variant`) | "ours" (init_from)
    c.model.hf_checkpoint = f"openai/whisper-{arg.variant}"  # HF directory or hub id
    c.model.init_from = ""  # a workdir of ours; its latest checkpoint's parameters
    c.model.variant = arg.variant  # architecture for init="scratch"
    c.model.arch_overrides = ml_collections.ConfigDict()  # e.g. d_model, decoder_layers for "scratch"
    c.model.conv_init_std = 0.0  # "scratch": std of the encoder's input convs' kernels; 0 = HF's 0.02
    # How the model runs (model/backend.py resolves "auto" from the devices: bfloat16 compute on GPU/TPU with
    # float32 master weights and optimizer state; float32 on CPU, where bfloat16 matmuls are ~50% slower).
    c.model.dtype = "auto"  # compute dtype: auto | float32 | bfloat16 | float16
    c.model.param_dtype = "float32"  # master weights
    c.model.remat = "none"  # per layer: none | full | dots (keep matmul outputs, recompute the rest)
    c.model.scan_layers = False
    c.model.attention_impl = "auto"  # auto | xla | cudnn (NVIDIA) | splash (TPU) | cpu
    # LoRA adapters (model/lora.py), the original's peft runs; rank 0 = none. targets: regexes searched in
    # dotted layer paths (e.g. "q_proj" adapts every q_proj). bias: which biases train too ("none" | "all" |
    # "lora_only"). dropout: on the adapters' input, in training only (peft's lora_dropout; original 0.05).
    c.model.lora = ml_collections.ConfigDict(dict(rank=0, alpha=0.0, dropout=0.0, targets=(), bias="none"))

    # Data: TFDS builds of tfds_builders/* under data_dir; mixture weights by dataset name.
    c.data = ml_collections.ConfigDict()
    c.data.data_dir = "~/tensorflow_datasets"  # with data.synthetic.enabled, "" = <workdir>/data/tfds
    c.data.mel_config = "mel80"  # "mel128" for large-v3
    c.data.mixture = ml_collections.ConfigDict({"clotho": 1.0, "audiocaps": 0.0, "audioset": 0.0})
    c.data.max_length = 80  # tokens per sequence counting the forced prompt (the original's 80)
    c.data.train_prompt = True  # the original trained the forced prompt/prefix tokens too
    c.data.num_threads = 8
    c.data.prefetch_batches = 4
    # The synthetic sound-scene set (audiocap_jax/data/demo.py): when enabled, train.py generates, prepares and
    # builds it into data_dir before training (each stage skipped when already done).
    c.data.synthetic = ml_collections.ConfigDict(
        dict(
            enabled=False,
            root="",  # raw layouts + AudioFolders; "" = <workdir>/data/synthetic
            # Clips per split of each dataset (Clotho-style captions, AudioSet-style keywords).
            num_train=synthetic.DEFAULT_NUM_TRAIN,
            num_valid=synthetic.DEFAULT_NUM_VALID,
            num_test=synthetic.DEFAULT_NUM_TEST,
            seed=0,
            max_events=synthetic.MAX_EVENTS,
            workers=0,  # processes for generation and the TFDS builds; 0 = one per core
        )
    )
    c.data.augment = ml_collections.ConfigDict(
        dict(
            shift_probability=0.0,
            max_shift_fraction=0.1,
            gain_probability=0.0,
            max_gain_db=10.0,
            mask_probability=0.0,
            num_time_masks=2,
            max_time_mask_frames=50,
            num_freq_masks=2,
            max_freq_mask_bins=8,
        )
    )

    c.batch_size = 32  # global, over all devices and processes
    c.accum_steps = 1  # micro-batches per optimizer step (batch_size must divide by it)
    c.total_steps = 100_000

    c.optim = ml_collections.ConfigDict()
    c.optim.lr = 2e-5
    c.optim.warmup_steps = 500
    c.optim.schedule = "linear"  # linear | cosine | constant (after warmup)
    c.optim.end_lr_fraction = 0.0
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.eps = 1e-8
    c.optim.weight_decay = 0.0  # the original set none
    c.optim.max_grad_norm = 1.0
    c.optim.train_only = ()  # regexes over parameter names, e.g. ("fc1",) for the fc1-only "slice"
    c.optim.freeze = ()  # regexes, e.g. (r"^encoder\.",)

    c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})

    # Validation with the shared jitted beam search; split per dataset, each with its own prefix.
    c.eval = ml_collections.ConfigDict()
    c.eval.every_steps = 1000  # 0 = no validation
    c.eval.datasets = ml_collections.ConfigDict({"clotho": "validation"})
    c.eval.max_clips = 0  # per dataset; 0 = all (the original limited to 200/100 during pretraining)
    c.eval.batch_size = 32
    # Decoding: the keys of configs/predict.py, with the same defaults and meanings (search_settings.py),
    # except greedy search: the original validated greedily (generation_num_beams 1).
    c.eval.update(decoding_keys(num_beams=1))
    c.eval.metrics = "coco"  # metric preset: coco | dcase2023 | dcase2024 (metrics.scoring.PRESETS)
    # Any computed key, e.g. "clotho/fense" with dcase2024; falls back to clotho/cider_d when not computed.
    c.eval.best_metric = "clotho/spider"
    c.eval.num_samples_logged = 8

    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every_steps = 1000
    c.checkpoint.keep_last = 2
    c.checkpoint.keep_best = 1
    c.checkpoint.async_save = True
    c.checkpoint.export_hf = True  # write workdir/hf_export (a transformers-loadable directory) at the end

    c.log = ml_collections.ConfigDict()
    c.log.every_steps = 50
    c.log.wandb_mode = "disabled"  # "online" | "offline" | "disabled"; WANDB_MODE overrides
    c.log.project = "audiocap-jax"
    c.log.group = ""
    c.log.name = ""
    c.log.tags = ()
    c.log.peak_tflops_per_device = 0.0  # for MFU; 0 = look up the device kind (H100/A100/TPU) or skip

    if arg.runlocal:  # a CPU-sized version of the same run
        c.batch_size = 8
        c.total_steps = 20
        c.optim.warmup_steps = 5
        c.eval.every_steps = 10
        c.eval.max_clips = 16
        c.eval.batch_size = 8
        c.checkpoint.every_steps = 10
        c.log.every_steps = 1
    return c
