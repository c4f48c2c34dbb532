"""Tiny models for the scaling tests: a 64-wide SanaTransformer, a LLaVA yes/no judge, a CLIP scorer."""
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sana_jax.configs.base import model_config
from sana_jax.models.transformer import abstract_transformer

CAPTION_CHANNELS = 16
WORDS = ["<pad>", "<unk>", "<s>", "</s>", "<image>", "yes", "no", "a", "red", "blue", "circle", "square",
         "the", "prompt", "is", "image", "and", "'yes'", "'no'"]


def tiny_config(depth=3, qk_norm=True, **overrides):
  cfg = model_config(name="scaling_test", in_channels=4, out_channels=4, hidden_size=64, depth=depth,
                     cross_num_heads=2, cross_head_dim=32, caption_channels=CAPTION_CHANNELS,
                     qk_norm=qk_norm, sample_size=4)
  cfg.update(overrides)
  return cfg


def tiny_model(depth=3, qk_norm=True, seed=0, **overrides):
  """A model with random N(0, 0.1) weights (norm weights 1 + N(0, 0.1)), filled on the host: building
  with the real initialisers compiles every initialiser per shape, tens of seconds on a busy CPU."""
  rng = np.random.default_rng(seed)
  graphdef, state = nnx.split(abstract_transformer(tiny_config(depth, qk_norm, **overrides)))
  flat = []
  for path, var in nnx.to_flat_state(state):
    value = 0.1 * rng.standard_normal(var.shape).astype(np.float32)
    if path[-1] == "weight":
      value += 1.0
    flat.append((path, var.replace(jnp.asarray(value))))
  return nnx.merge(graphdef, nnx.from_flat_state(flat))


@nnx.jit
def forward(model, latents, timesteps, text, text_mask):
  """The model call, compiled once per architecture."""
  return model(latents, timesteps, text, text_mask)


def inputs(batch=2, size=4, text_len=5, seed=0):
  """(latents [B, size, size, 4], timesteps [B], text [B, L, C], text_mask [B, L] with padding)."""
  rng = np.random.default_rng(seed)
  latents = rng.standard_normal((batch, size, size, 4)).astype(np.float32)
  timesteps = np.linspace(150.0, 850.0, batch).astype(np.float32)
  text = rng.standard_normal((batch, text_len, CAPTION_CHANNELS)).astype(np.float32)
  mask = np.ones((batch, text_len), np.int32)
  mask[0, text_len - 2:] = 0
  return latents, timesteps, text, mask


def _word_tokenizer(bos_eos=False):
  from tokenizers import Tokenizer, models, pre_tokenizers, processors
  from transformers import PreTrainedTokenizerFast
  tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
  tok.add_special_tokens(["<image>"])
  if bos_eos:  # CLIP pools the text at its end-of-text token
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 2), ("</s>", 3)])
  return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>",
                                 bos_token="<s>", eos_token="</s>")


def save_tiny_llava(path, seed=0):
  """A random LlavaForConditionalGeneration (1-layer CLIP vision tower + 1-layer Llama, 16x16 images,
  4 image tokens) with a LlavaProcessor and a word-level tokenizer, saved to `path`."""
  import torch
  from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                            LlavaForConditionalGeneration, LlavaProcessor)
  vision = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                            image_size=16, patch_size=8, projection_dim=16)
  text = LlamaConfig(vocab_size=len(WORDS), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                     num_attention_heads=2, num_key_value_heads=2, pad_token_id=0, bos_token_id=2, eos_token_id=3)
  cfg = LlavaConfig(vision_config=vision, text_config=text, image_token_index=WORDS.index("<image>"),
                    image_seq_length=4, vision_feature_layer=-1)
  torch.manual_seed(seed)
  model = LlavaForConditionalGeneration(cfg).eval()
  with torch.no_grad():  # make "yes" / "no" likely first tokens so verdicts vary between images
    head = model.get_output_embeddings().weight
    head[WORDS.index("yes")] *= 8
    head[WORDS.index("no")] *= 8
  processor = LlavaProcessor(
      image_processor=CLIPImageProcessor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}),
      tokenizer=_word_tokenizer(), patch_size=8, vision_feature_select_strategy="default", image_token="<image>",
      num_additional_image_tokens=1)
  model.save_pretrained(path)
  processor.save_pretrained(path)
  return path


def save_tiny_clip(path, seed=0):
  """A random CLIPModel (1 layer per tower, 16x16 images) with a CLIPProcessor, saved to `path`."""
  import torch
  from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor
  cfg = CLIPConfig(
      text_config=dict(vocab_size=len(WORDS), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                       num_attention_heads=2, max_position_embeddings=32, projection_dim=8, eos_token_id=3,
                       pad_token_id=0, bos_token_id=2),
      vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                         image_size=16, patch_size=8, projection_dim=8),
      projection_dim=8)
  torch.manual_seed(seed)
  CLIPModel(cfg).eval().save_pretrained(path)
  CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 16},
                                                   crop_size={"height": 16, "width": 16}),
                tokenizer=_word_tokenizer(bos_eos=True)).save_pretrained(path)
  return path


def tiny_pipeline(seed=0):
  """A SanaPipeline over a depth-2 model (12 latent channels) with the parameter-free codecs:
  2x2 space-to-depth "latents" and fixed random word vectors for captions."""
  from sana_jax.data import shapes
  from sana_jax.models.simple_codecs import SpaceToDepthAutoencoder, WordEmbeddingTextEncoder
  from sana_jax.sampling.pipeline import SanaPipeline
  model = tiny_model(depth=2, seed=seed, in_channels=12, out_channels=12)
  text_encoder = WordEmbeddingTextEncoder(shapes.vocabulary(), CAPTION_CHANNELS, 8)
  return SanaPipeline(model, SpaceToDepthAutoencoder(2), text_encoder,
                      {"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 3.0})
