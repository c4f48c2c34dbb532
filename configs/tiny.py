"""tiny: a small SANA 1.5-style model for CPU runs, tests and the default training job.

COMMAND: python -m sana_jax.train            (this config is the default; 5-8 min on a 2-core VM)
Trains on the built-in 32x32 shapes data. Like SANA on DC-AE latents, the transformer trains on
the latents of an autoencoder: a small conv autoencoder (32x32x3 -> 8x8x16) that the job fits to
the shapes images first and keeps in <workdir>/autoencoder (docs/training.md, "A fitted
autoencoder"); captions are fixed random word vectors. Settings measured in docs/training.md:
sincos position embedding, learning rate 3e-3 ("The latent scale"), 4 blocks and x-prediction
(the network outputs the clean latent; "Depth and x-prediction"), 16 latent channels rather than
8 or 32 or 4x4 space-to-depth pixels ("A fitted autoencoder"), the caption's mean token added to
the timestep embedding (fewer extra objects; "Where the multi-object prompts fail"); 2400 steps.
"""
from sana_jax.configs.base import base_config


def get_config():
  c = base_config()
  c.model.update(name="tiny", in_channels=16, out_channels=16, hidden_size=64, depth=4,
                 cross_num_heads=2, cross_head_dim=32, caption_channels=32, qk_norm=True,
                 sample_size=8, scan_unroll=4, use_pe=True,
                 prediction="x0", pooled_caption=True)
  # scaling_factor: for --config.codecs.autoencoder=space_to_depth (the fifth round's latents, and
  # `python -m sana_jax.preprocess`'s built-in codec): 1 / the pixel std of the shapes data.
  c.codecs.update(autoencoder="conv_fit", autoencoder_factor=4, fit_widths=(16, 32, 32), fit_latent_channels=16,
                  fit_steps=600, scaling_factor=5.75, text_encoder="word_embedding", max_text_length=16)
  c.data.update(name="shapes", image_size=32)
  c.optimizer.update(name="adamw", learning_rate=3e-3, warmup_steps=100, grad_clip=1.0)
  c.train.update(batch_size=32, num_steps=2400, log_every=50, checkpoint_every=500,
                 sample_every=1000, keep_checkpoints=2)
  c.mesh.update(data=-1, fsdp=1, tensor=1)
  c.sampling.update(sampler="flow_euler", num_steps=20, guidance_scale=3.0, num_images=16,
                    num_eval_images=192)
  return c
