"""SanaMS1.5_1600M_P1_D20: width 2240, depth 20, 20 cross-attention heads of 112, qk-norm (SANA 1.5)."""
from sana_jax.configs.base import base_config


def get_config():
  c = base_config()
  c.model.update(name="SanaMS1.5_1600M_P1_D20", hidden_size=2240, depth=20, cross_num_heads=20,
                 cross_head_dim=112, qk_norm=True)
  return c
