"""Named choices of the training config, needed both by the code that acts on them and by `preflight`.

No imports, so `preflight` (which `predict` and `evaluate` import) names them without loading training code.
"""

INITS = ("ours", "hf", "scratch")  # config.model.init: where the weights come from (load.build_model)
SCHEDULES = ("linear", "cosine", "constant")  # config.optim.schedule: the decay after warmup (train_step)
