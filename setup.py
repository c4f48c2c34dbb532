"""sana_jax: SANA / SANA 1.5 linear-attention diffusion transformers in JAX/Flax."""
from setuptools import find_packages, setup

setup(
    name="sana_jax",
    version="0.1.0",
    description="SANA 1.5 text-to-image linear DiT in JAX/Flax NNX: training, sampling, scaling.",
    packages=find_packages(include=["sana_jax", "sana_jax.*"]),  # configs/ installs as sana_jax.configs (symlink)
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.10.2",
        "flax>=0.12.8",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12.8",
        "ml-collections>=1.0",
        "absl-py",
        "safetensors",
        "numpy",
        "pillow",
        "tqdm",
        "tensorboardX",
        "grain>=0.2.18",
        "array-record",
        "tokenizers",
        "matplotlib",
        "transformers>=5.0",
    ],
    extras_require={
        "test": [
            "pytest",
            "ruff>=0.17",
            "torch==2.13.0",
            "diffusers==0.42.1",
            "peft==0.21.2",  # diffusers LoRA files in tests/convert/test_lora.py
            "transformers>=5.0",
            "came-pytorch==0.1.3",
            "bitsandbytes>=0.50",
            "accelerate",
            "tensorflow-datasets==4.9.10",
            "importlib_resources",  # tensorflow-datasets imports it lazily without declaring it
            "nbclient",
            "nbformat",
            "ipykernel",
        ],
        "tpu": ["jax[tpu]>=0.10.2"],
        "gpu": ["jax[cuda13]>=0.10.2"],
    },
)
