"""SanaMS_600M_P1_D28: width 1152, depth 28, 16 cross-attention heads of 72."""
from sana_jax.configs.base import base_config


def get_config():
  c = base_config()
  c.model.update(name="SanaMS_600M_P1_D28", hidden_size=1152, depth=28, cross_num_heads=16,
                 cross_head_dim=72, qk_norm=False)
  return c
