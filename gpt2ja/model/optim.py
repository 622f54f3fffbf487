"""The optimizer and learning-rate schedule of a training run.

AdamW with decoupled weight decay on the matmul kernels only (attention
Q/K/V/output and MLP in/out): not on LayerNorm scales and shifts, biases, or
the token and position embeddings. Decaying the tied embedding would also
shrink the output logits' scale; minGPT and the GPT-3 paper's practice exclude
them. The schedule is a linear warmup to the peak over ``warmup_steps`` (the
first step already at ``peak / warmup_steps``), then a cosine decay to
``peak × min_lr_ratio`` at ``steps``, flat after. It is a function of the
optimizer's own step counter, which checkpoints hold, so a resumed run
continues on the same curve.

Example::

    opt = make_optimizer(cfg, lm)        # built for lm's weights, ready to checkpoint
    float(lr_schedule(cfg)(0))           # the first step's learning rate
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gpt2ja.model.train import TrainConfig


def lr_schedule(cfg: "TrainConfig"):
    """Linear warmup over ``warmup_steps``, cosine to the floor at ``steps`` (a Keras schedule of the step).

    Written with ``keras.ops``: the same float32 arithmetic on TensorFlow and JAX.
    """
    import keras
    from keras import ops

    peak, floor = cfg.learning_rate, cfg.learning_rate * cfg.min_lr_ratio
    warmup, total = cfg.warmup_steps, cfg.steps

    class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
        def __call__(self, step):
            s = ops.cast(step, "float32")
            warm = peak * (s + 1.0) / max(warmup, 1)
            progress = ops.clip((s - warmup) / max(total - warmup, 1), 0.0, 1.0)
            cosine = floor + (peak - floor) * 0.5 * (1.0 + ops.cos(math.pi * progress))
            return ops.where(s < warmup, warm, cosine)

        def get_config(self):
            return {"peak": peak, "floor": floor, "warmup": warmup, "total": total}

    return WarmupCosine()


def decayed(variable) -> bool:
    """Whether AdamW decays ``variable``: the matmul kernels (paths ending in ``kernel``) only."""
    return variable.path.endswith("kernel")


def make_optimizer(cfg: "TrainConfig", lm):
    """AdamW (decay on matmul kernels only), wrapped for loss scaling under fp16; built for ``lm``'s weights.

    Build it inside ``strategy.scope()``. Gradients given to ``apply`` must be
    final: summed over replicas and clipped (see :mod:`gpt2ja.model.train`).
    """
    import keras

    class AdamW(keras.optimizers.AdamW):
        # Our step all-reduces and clips the *global* gradient itself (Keras would
        # clip each replica's share before summing, which is not global-norm
        # clipping, then sum again): gradients reaching apply() are final.
        def _all_reduce_sum_gradients(self, grads_and_vars):
            return list(grads_and_vars)

    opt = AdamW(
        learning_rate=lr_schedule(cfg),
        weight_decay=cfg.weight_decay,
        beta_1=cfg.beta1,
        beta_2=cfg.beta2,
        epsilon=cfg.epsilon,
    )
    variables = lm.trainable_variables
    opt.exclude_from_weight_decay(var_list=[v for v in variables if not decayed(v)])
    if cfg.mixed_precision == "fp16":
        opt = keras.optimizers.LossScaleOptimizer(opt)
    opt.build(variables)
    return opt
