"""Tiny, hub-free Gemma-2 and tokenizer folders for tests, and session fixtures over them.

`tiny_gemma_config()` is small enough to run in milliseconds but keeps every Gemma-2 feature live:
grouped-query attention (4 heads, 2 kv heads), a sliding window (4) shorter than the test
sequences so the sliding layers really mask, soft-capping, and alternating layer types.
"""
import pytest
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers

from sana_jax.sampling.text_encoding import CHI_DEFAULT

SPECIAL_TOKENS = ("<pad>", "<eos>", "<bos>", "<unk>")  # ids 0, 1, 2, 3 as in Gemma
PROMPTS = (
    "A cat sleeping on a red sofa",
    "two dogs running",
    "A busy city street at dusk with glowing lamps and a double-decker bus",
)


def tiny_gemma_config(vocab_size: int = 512, num_hidden_layers: int = 4, sliding_window: int = 4):
  return transformers.Gemma2Config(
      vocab_size=vocab_size, hidden_size=64, intermediate_size=128,
      num_hidden_layers=num_hidden_layers, num_attention_heads=4, num_key_value_heads=2,
      head_dim=16, query_pre_attn_scalar=16, sliding_window=sliding_window,
      attn_logit_softcapping=50.0, final_logit_softcapping=30.0, max_position_embeddings=1024,
      pad_token_id=0, eos_token_id=1, bos_token_id=2, attn_implementation="eager")


def randomize_norms(model, seed: int = 0):
  """Gemma initialises RMSNorm gains to 0 (gain 1); random gains make the (1 + w) convention matter."""
  import torch
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, param in model.named_parameters():
      if "norm" in name:
        param.copy_(0.5 * torch.randn(param.shape, generator=gen))
  return model


def build_tiny_gemma(path, *, causal_lm: bool = False, seed: int = 0, **config_kwargs):
  """Saves a random tiny `Gemma2Model` (or `Gemma2ForCausalLM`) to `path`; returns the eval-mode model."""
  import torch
  torch.manual_seed(seed)
  config = tiny_gemma_config(**config_kwargs)
  cls = transformers.Gemma2ForCausalLM if causal_lm else transformers.Gemma2Model
  model = randomize_norms(cls(config).eval(), seed)
  model.save_pretrained(path)
  return model


def build_tiny_tokenizer(path, corpus=(*CHI_DEFAULT, *PROMPTS)):
  """Trains a word-level tokenizer on `corpus` (lower- and original-case) with Gemma's special ids and
  BOS-prepending post-processor, saves it with `save_pretrained` to `path`; returns the wrapper."""
  tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  trainer = trainers.WordLevelTrainer(special_tokens=list(SPECIAL_TOKENS), min_frequency=1)
  tok.train_from_iterator([*corpus, *(c.lower() for c in corpus)], trainer=trainer)
  bos_id = tok.token_to_id("<bos>")
  tok.post_processor = processors.TemplateProcessing(
      single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", bos_id)])
  wrapped = transformers.PreTrainedTokenizerFast(
      tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
      unk_token="<unk>", padding_side="right")
  wrapped.save_pretrained(path)
  return wrapped


# Session-wide fixtures (imported by the conftest.py of tests/models and tests/sampling).
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

