"""A random tiny diffusers SanaTransformer2DModel (q/k norms) saved once for the model tests."""
import pytest

from tests.models.reference import random_diffusers_transformer


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """(the diffusers model, the folder it was saved to with save_pretrained)."""
  ref = random_diffusers_transformer(seed=3, qk_norm=True)
  folder = tmp_path_factory.mktemp("ref")
  ref.save_pretrained(folder)
  return ref, folder
