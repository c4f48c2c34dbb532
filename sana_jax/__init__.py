"""sana_jax: SANA / SANA 1.5 linear-attention diffusion transformers in JAX / Flax NNX."""
from sana_jax.convert.checkpoints import export_diffusers, load_transformer, save_transformer
from sana_jax.convert.training_run import load_training_run
from sana_jax.models.transformer import SanaTransformer

__all__ = ["SanaPipeline", "SanaTransformer", "export_diffusers", "load_training_run", "load_transformer",
           "save_transformer"]


def __getattr__(name):
  # The pipeline pulls in the tokenizer stack; import it only when asked for.
  if name == "SanaPipeline":
    from sana_jax.sampling.pipeline import SanaPipeline
    return SanaPipeline
  raise AttributeError(f"module 'sana_jax' has no attribute {name!r}")
