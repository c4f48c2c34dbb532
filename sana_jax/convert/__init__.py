"""PyTorch (diffusers / NVlabs) <-> sana_jax checkpoint conversion."""
