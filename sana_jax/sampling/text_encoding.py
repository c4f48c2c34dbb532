"""Prompts -> Gemma-2 features and mask, exactly as diffusers' `SanaPipeline.encode_prompt` builds them.

A prompt is lower-cased and stripped, the Complex Human Instruction (CHI) is prepended to it, and
the text is right-padded / truncated to `len(tokens(CHI)) + max_sequence_length - 2` tokens (the CHI
count includes BOS). The encoder sees the whole sequence, so the prompt tokens attend to the
instruction, but only BOS and the last `max_sequence_length - 1` positions are kept. Without CHI
the padded length is `max_sequence_length` and that selection keeps everything. The negative prompt
never gets the CHI; the usual negative "" is encoded once per `max_sequence_length` and cached.
diffusers' optional `clean_caption` (needs bs4 + ftfy; off by default in SANA) is not reproduced.
"""
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sana_jax.convert.gemma2 import load_gemma2
from sana_jax.models.gemma2 import Gemma2Model

# SANA's default instruction (NVlabs SANA 1.5 configs; diffusers `SanaPipeline.__call__` default).
CHI_DEFAULT = (
    "Given a user prompt, generate an 'Enhanced prompt' that provides detailed visual descriptions "
    "suitable for image generation. Evaluate the level of detail in the user prompt:",
    "- If the prompt is simple, focus on adding specifics about colors, shapes, sizes, textures, and "
    "spatial relationships to create vivid and concrete scenes.",
    "- If the prompt is already detailed, refine and enhance the existing details slightly without "
    "overcomplicating.",
    "Here are examples of how to transform or refine prompts:",
    "- User Prompt: A cat sleeping -> Enhanced: A small, fluffy white cat curled up in a round shape, "
    "sleeping peacefully on a warm sunny windowsill, surrounded by pots of blooming red flowers.",
    "- User Prompt: A busy city street -> Enhanced: A bustling city street scene at dusk, featuring "
    "glowing street lamps, a diverse crowd of people in colorful clothing, and a double-decker bus "
    "passing by towering glass skyscrapers.",
    "Please generate only the enhanced description for the prompt below and avoid including any "
    "additional commentary or evaluations:",
    "User Prompt: ",
)


def _as_prompt_list(prompts, what: str) -> list[str]:
  prompts = [prompts] if isinstance(prompts, str) else list(prompts)
  if not prompts or not all(isinstance(p, str) for p in prompts):
    raise ValueError(f"{what} must be a string or a non-empty list of strings, got {prompts!r}")
  return prompts


def _gemma_forward(graphdef, state, input_ids, attention_mask):
  return nnx.merge(graphdef, state)(input_ids, attention_mask)


class PromptEncoder:
  """Gemma-2 + its tokenizer, with SANA's prompting. `encode` returns (embeds [B, L, C], mask [B, L])."""

  def __init__(self, model: Gemma2Model, tokenizer):
    self.model = model
    self.tokenizer = tokenizer
    self.tokenizer.padding_side = "right"
    graphdef, self._state = nnx.split(model)
    # jax.jit keys its cache on shapes: one compilation per (batch, padded length).
    self._forward = jax.jit(lambda state, ids, mask: _gemma_forward(graphdef, state, ids, mask))
    self._null_cache = {}

  @classmethod
  def from_pretrained(cls, text_encoder_path, tokenizer_path, dtype=jnp.float32) -> "PromptEncoder":
    """Loads a transformers Gemma-2 folder and an `AutoTokenizer` folder (both local)."""
    from transformers import AutoTokenizer
    return cls(load_gemma2(text_encoder_path, dtype=dtype), AutoTokenizer.from_pretrained(tokenizer_path))

  @property
  def dtype(self):
    return self.model.dtype

  def tokenize(self, prompts, complex_human_instruction=CHI_DEFAULT, max_sequence_length: int = 300):
    """-> input_ids, attention_mask: int32 numpy [B, padded length], the CHI prepended when given."""
    if max_sequence_length < 1:
      raise ValueError(f"max_sequence_length must be >= 1, got {max_sequence_length}")
    texts = [p.lower().strip() for p in _as_prompt_list(prompts, "prompt")]
    length = max_sequence_length
    if complex_human_instruction:
      lines = ([complex_human_instruction] if isinstance(complex_human_instruction, str)
               else list(complex_human_instruction))
      instruction = "\n".join(lines)
      texts = [instruction + t for t in texts]
      length = len(self.tokenizer.encode(instruction)) + max_sequence_length - 2
    batch = self.tokenizer(texts, padding="max_length", max_length=length, truncation=True,
                           add_special_tokens=True, return_tensors="np")
    return batch["input_ids"].astype(np.int32), batch["attention_mask"].astype(np.int32)

  def encode(self, prompts, complex_human_instruction=CHI_DEFAULT, max_sequence_length: int = 300):
    """-> embeds [B, max_sequence_length, C] in the model dtype, mask [B, max_sequence_length] int32.

    complex_human_instruction: lines joined with "\\n" (SANA's default), a single string, or
    None / () to encode the bare prompt.
    """
    input_ids, mask = self.tokenize(prompts, complex_human_instruction, max_sequence_length)
    hidden = self._forward(self._state, input_ids, mask)  # [B, padded length, C]
    padded = input_ids.shape[1]
    first_kept = padded - (max_sequence_length - 1)
    if first_kept < 0:
      raise ValueError(f"padded length {padded} is shorter than max_sequence_length - 1 = "
                       f"{max_sequence_length - 1}")
    keep = np.concatenate([[0], np.arange(first_kept, padded)])  # BOS + the last L - 1 positions
    return hidden[:, keep], jnp.asarray(mask[:, keep])

  def null_embedding(self, max_sequence_length: int = 300):
    """The "" prompt without CHI: (embeds [1, L, C], mask [1, L]), computed once per length."""
    if max_sequence_length not in self._null_cache:
      self._null_cache[max_sequence_length] = self.encode([""], None, max_sequence_length)
    return self._null_cache[max_sequence_length]

  def encode_negative(self, negative_prompt="", batch_size: int = 1, max_sequence_length: int = 300):
    """Negative prompts as SANA encodes them (no CHI): a string is repeated batch_size times; a list
    must hold batch_size prompts. All-empty prompts come from the cached null embedding."""
    prompts = _as_prompt_list(negative_prompt, "negative_prompt")
    if isinstance(negative_prompt, str):
      prompts = prompts * batch_size
    if len(prompts) != batch_size:
      raise ValueError(f"got {len(prompts)} negative prompts for a batch of {batch_size}")
    if all(not p.strip() for p in prompts):
      embeds, mask = self.null_embedding(max_sequence_length)
      return jnp.repeat(embeds, batch_size, axis=0), jnp.repeat(mask, batch_size, axis=0)
    return self.encode(prompts, None, max_sequence_length)
