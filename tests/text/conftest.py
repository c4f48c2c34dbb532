"""Session-wide tiny Gemma-2 folders, tokenizer folder and their PyTorch references for tests/text."""
import pytest
import transformers

from gemma_builders import build_tiny_gemma, build_tiny_tokenizer


@pytest.fixture(scope="session")
def gemma_dir(tmp_path_factory):
  path = tmp_path_factory.mktemp("gemma2_model")
  build_tiny_gemma(path)
  return path


@pytest.fixture(scope="session")
def torch_gemma(gemma_dir):
  """The reference: transformers' Gemma2Model read back from the same folder, eager attention."""
  return transformers.Gemma2Model.from_pretrained(gemma_dir, attn_implementation="eager").eval()


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
  path = tmp_path_factory.mktemp("gemma2_tokenizer")
  build_tiny_tokenizer(path)
  return path


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir):
  return transformers.AutoTokenizer.from_pretrained(tokenizer_dir)

