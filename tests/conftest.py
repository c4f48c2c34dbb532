"""Test-wide setup: 8 simulated CPU devices for sharding tests, set before jax is imported."""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# The CLIs and SanaPipeline turn JAX's persistent compilation cache on by default (under the user's
# cache folder): tests keep theirs in a folder of their own (tests of the cache set it themselves).
os.environ.setdefault("SANA_JAX_COMPILATION_CACHE",
                      os.path.join(__import__("tempfile").gettempdir(), f"sana_jax_test_cache_{os.getpid()}"))
