"""lora: train a LoRA adapter on a frozen base model (docs/lora.md); the tiny base by default (CPU).

COMMAND: python -m sana_jax.train --config=configs/lora.py --config.train.init_from=workdirs/tiny \
           --config.data.name=folder --config.data.path=my_images/ --workdir=workdirs/lora
Only the adapter trains (optimiser state for it alone); the base named by train.init_from (a
training workdir, one of our checkpoints, a diffusers folder or a .pth) stays frozen in its own
dtype, and the checkpoints hold the adapter plus the base's path and fingerprint. DreamBooth:
  --config.data.instance_prompt="a sks shape"        every image of the folder gets this caption
  --config.dreambooth.class_prompt="a shape" --config.dreambooth.prior_loss_weight=1.0
draws class images from the base into <workdir>/class_images and mixes them into every batch.

A released architecture: `--config=configs/lora.py:SanaMS1.5_1600M_P1_D20` (any name of
`configs.NAMED_CONFIGS`) takes that preset, keeps the frozen base and the compute in bfloat16 (the
adapter's weights and optimiser state are float32) and trains from a latent cache
(--config.data.name=cache, written by `python -m sana_jax.preprocess`).
"""
from sana_jax import configs
from sana_jax.configs.base import lora_config
from sana_jax.training.dreambooth import dreambooth_config


def get_config(preset: str = "tiny"):
  c = configs.get_config(preset or "tiny")
  c.lora = lora_config()
  c.dreambooth = dreambooth_config()
  # Caption dropout stays on (0.1): the sampler's guidance contrasts the prompt with the empty
  # prompt, whose prediction the adapter changes too.
  c.train.update(sample_every=0)
  if c.model.name == "tiny":
    c.lora.update(rank=4, alpha=4.0)
    c.optimizer.update(name="adamw", learning_rate=1e-3, warmup_steps=20, weight_decay=0.0, grad_clip=1.0)
    c.train.update(batch_size=16, num_steps=300, log_every=25, checkpoint_every=100)
    c.sampling.update(num_images=8, num_eval_images=0)
    return c
  # diffusers' train_dreambooth_lora_sana.py: AdamW 1e-4, rank 4-16, batch 1-4, 500+ steps.
  c.model.update(dtype="bfloat16", param_dtype="bfloat16", remat_policy="full")
  c.optimizer.update(name="adamw", learning_rate=1e-4, warmup_steps=0, weight_decay=0.0, grad_clip=1.0)
  c.train.update(batch_size=4, num_steps=1000, log_every=10, checkpoint_every=250)
  c.data.update(name="cache", image_size=1024)
  c.sampling.update(num_images=0, num_eval_images=0)
  return c
