"""Model-test fixtures: a random tiny diffusers SanaTransformer2DModel (q/k norms) saved once, and the
tiny Gemma-2 / tokenizer folders of gemma_builders.py."""
import pytest

from tests.models.gemma_builders import gemma_dir, tokenizer, tokenizer_dir, torch_gemma  # noqa: F401 - fixtures
from tests.models.reference import random_diffusers_transformer


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """(the diffusers model, the folder it was saved to with save_pretrained)."""
  ref = random_diffusers_transformer(seed=3, qk_norm=True)
  folder = tmp_path_factory.mktemp("ref")
  ref.save_pretrained(folder)
  return ref, folder
