"""tiny24: the default training job — configs/tiny.py's model on 24x24 shapes, one token per layout cell.

COMMAND: python -m sana_jax.train            (this config is the default; about 4 min on a 2-core VM)
The built-in shapes data lays objects out on a 3x3 grid; at 24x24 px each grid cell is 8x8 px, so
an 8x8 space-to-depth codec (no autoencoder to fit) makes a 3x3 latent whose tokens are exactly the
cells: 9 tokens of 192 pixel values. The transformer is tiny.py's (width 64, 4 blocks, x-prediction,
pooled caption, sincos position embedding); a step costs a quarter of tiny's 64-token step, and the
flow shift is 6 for training and sampling (a token of 192 pixel values keeps more signal at a given
noise level than one of 16 latent channels, as SANA raises the shift with resolution); samples use
CFG 2. Each caption token also carries the two tokens before it (`codecs.text_context`, as a
causal LM's features do), so "red circle" and "blue circle" give different "circle" tokens and
colour attribution can be read. The job ends by scoring one sample per held-out prompt and then
the best of 16, kept by a contrastive judge it fits on renders (SANA 1.5's inference-time
scaling). Measured against tiny.py and other settings in docs/training.md ("Layout cells as
tokens", eleventh round; "Words that carry their context", twelfth).
"""
from sana_jax.configs import tiny


def get_config():
  c = tiny.get_config()
  c.model.update(name="tiny24", in_channels=192, out_channels=192, sample_size=3)
  # scaling_factor: 1 / the pixel std of the 24x24 shapes images (4.93 over 512 of them).
  c.codecs.update(autoencoder="space_to_depth", autoencoder_factor=8, scaling_factor=4.93, text_context=2)
  c.data.update(image_size=24)
  c.train.update(num_steps=6000, flow_shift=6.0, checkpoint_every=1000, sample_every=2000)
  c.sampling.update(flow_shift=6.0, guidance_scale=2.0, eval_best_of=16)
  return c
