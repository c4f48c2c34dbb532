"""tiny: a small SANA 1.5-style model for CPU runs, tests and the default training job.

COMMAND: python -m sana_jax.train            (this config is the default; ~9 min on the 2-core Intel VM, ~4 on the AMD one)
Trains on the built-in 32x32 shapes data with parameter-free codecs: 4x4 space-to-depth "latents"
(8x8x48, scaled to unit standard deviation) and fixed random word vectors for the captions.
Settings measured in docs/training.md ("The latent scale"): the latents x 5.75 (1 / the pixel std
of the shapes data, 0.174; unscaled, every noise level of the flow schedule was effectively 17x
noisier), sincos position embedding, learning rate 3e-3; then ("Depth and x-prediction") 4 blocks
instead of 2 and x-prediction (the network outputs the clean latent), 2400 steps to stay within
10 minutes.
"""
from sana_jax.configs.base import base_config


def get_config():
  c = base_config()
  c.model.update(name="tiny", in_channels=48, out_channels=48, hidden_size=64, depth=4,
                 cross_num_heads=2, cross_head_dim=32, caption_channels=32, qk_norm=True,
                 sample_size=8, scan_unroll=4, use_pe=True,
                 prediction="x0")
  c.codecs.update(autoencoder="space_to_depth", autoencoder_factor=4, scaling_factor=5.75,
                  text_encoder="word_embedding", max_text_length=16)
  c.data.update(name="shapes", image_size=32)
  c.optimizer.update(name="adamw", learning_rate=3e-3, warmup_steps=100, grad_clip=1.0)
  c.train.update(batch_size=32, num_steps=2400, log_every=50, checkpoint_every=500,
                 sample_every=1000, keep_checkpoints=2)
  c.mesh.update(data=-1, fsdp=1, tensor=1)
  c.sampling.update(sampler="flow_euler", num_steps=20, guidance_scale=3.0, num_images=16,
                    num_eval_images=192)
  return c
