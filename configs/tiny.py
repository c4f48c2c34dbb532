"""tiny: a few-million-parameter SANA 1.5-style model for CPU runs, tests and the default training job."""
from configs.base import base_config


def get_config():
  c = base_config()
  c.model.update(name="tiny", in_channels=4, out_channels=4, hidden_size=64, depth=2,
                 cross_num_heads=2, cross_head_dim=32, caption_channels=32, qk_norm=True,
                 sample_size=8)
  return c
