"""lora: train a LoRA adapter (rank 4) on a trained tiny base model, on the CPU (docs/lora.md).

COMMAND: python -m sana_jax.train --config=configs/lora.py --config.train.init_from=workdirs/tiny \
           --config.data.name=folder --config.data.path=my_images/ --workdir=workdirs/lora
Only the adapter trains (optimiser state for it alone); the base named by train.init_from (a
training workdir, one of our checkpoints, a diffusers folder or a .pth) stays frozen in its own
dtype, and the checkpoints hold the adapter plus the base's path and fingerprint. DreamBooth:
  --config.data.instance_prompt="a sks shape"        every image of the folder gets this caption
  --config.dreambooth.class_prompt="a shape" --config.dreambooth.prior_loss_weight=1.0
draws class images from the base into <workdir>/class_images and mixes them into every batch.
For a released model, preset its architecture (e.g. --config.model.* of sana15_1600m_p1_d20.py
via `configs.get_config`) and train from a latent cache (`python -m sana_jax.preprocess`).
"""
from sana_jax.configs.base import lora_config
from sana_jax.configs.tiny import get_config as tiny_config
from sana_jax.training.dreambooth import dreambooth_config


def get_config():
  c = tiny_config()
  c.lora = lora_config(rank=4, alpha=4.0)
  c.dreambooth = dreambooth_config()
  c.optimizer.update(name="adamw", learning_rate=1e-3, warmup_steps=20, weight_decay=0.0, grad_clip=1.0)
  c.train.update(batch_size=16, num_steps=300, log_every=25, checkpoint_every=100, sample_every=0,
                 caption_dropout=0.0)
  c.sampling.update(num_images=8, num_eval_images=0)
  return c
