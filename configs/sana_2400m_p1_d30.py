"""SanaMS_2400M_P1_D30: width 2240, depth 30, 20 cross-attention heads of 112."""
from sana_jax.configs.base import base_config


def get_config():
  c = base_config()
  c.model.update(name="SanaMS_2400M_P1_D30", hidden_size=2240, depth=30, cross_num_heads=20,
                 cross_head_dim=112, qk_norm=False)
  return c
