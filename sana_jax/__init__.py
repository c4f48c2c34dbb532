"""sana_jax: SANA / SANA 1.5 linear-attention diffusion transformers in JAX / Flax NNX."""
from sana_jax.convert.checkpoints import load_transformer, save_transformer
from sana_jax.models.transformer import SanaTransformer

__all__ = ["SanaTransformer", "load_transformer", "save_transformer"]
