"""A tiny random diffusers Sana pipeline folder shared by the pipeline, CLI and notebook tests; the tiny
Gemma-2 / tokenizer folders for the text-encoding tests."""
import pytest

from tests.models.gemma_builders import gemma_dir, tokenizer, tokenizer_dir, torch_gemma  # noqa: F401 - fixtures
from tests.sampling.pipeline_builders import build_tiny_pipeline


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory):
  """(path, the diffusers SanaPipeline saved there)."""
  path = tmp_path_factory.mktemp("tiny_sana_pipeline")
  return path, build_tiny_pipeline(path)


@pytest.fixture(scope="session")
def tiny_pipe(tiny_folder):
  """Our SanaPipeline loaded from the tiny folder (its compilations are reused across tests)."""
  from sana_jax.sampling.pipeline import SanaPipeline
  return SanaPipeline.from_pretrained(tiny_folder[0])
