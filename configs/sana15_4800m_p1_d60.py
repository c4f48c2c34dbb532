"""SanaMS1.5_4800M_P1_D60: width 2240, depth 60, 20 cross-attention heads of 112, qk-norm (SANA 1.5)."""
from sana_jax.configs.base import base_config


def get_config():
  c = base_config()
  c.model.update(name="SanaMS1.5_4800M_P1_D60", hidden_size=2240, depth=60, cross_num_heads=20,
                 cross_head_dim=112, qk_norm=True)
  return c
