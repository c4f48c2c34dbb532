"""Gemma-2 decoder stack (SANA's text encoder) in Flax NNX (loaded by sana_jax/convert/gemma2.py).

SANA conditions on the last hidden state of Gemma-2-2B-IT (after the final norm); the LM head is
never used, so it is not built. Numerics follow transformers' `Gemma2Model` with eager attention:
embeddings are scaled by sqrt(hidden) in the parameter dtype, every RMSNorm runs in float32 with a
`(1 + w)` gain, attention logits are soft-capped before the mask, and softmax runs in float32.
The decoder layers are stacked on a leading layer axis and run with `nnx.scan`, so one layer is
compiled whatever the depth; sliding-window vs. global attention is a per-layer flag scanned along.
"""
import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from sana_jax.models.layers import RMSNorm

SLIDING = "sliding_attention"
FULL = "full_attention"
_GELU_APPROXIMATE = {"gelu_pytorch_tanh": True, "gelu_new": True, "gelu_tanh": True, "gelu": False}


@dataclasses.dataclass(frozen=True)
class Gemma2Config:
  """The architecture fields of a transformers `Gemma2Config`; defaults are Gemma-2-2B's."""
  vocab_size: int = 256000
  hidden_size: int = 2304
  intermediate_size: int = 9216
  num_hidden_layers: int = 26
  num_attention_heads: int = 8
  num_key_value_heads: int = 4
  head_dim: int = 256
  rms_norm_eps: float = 1e-6
  rope_theta: float = 10000.0
  query_pre_attn_scalar: float = 256.0
  attn_logit_softcapping: float | None = 50.0
  sliding_window: int | None = 4096
  # One entry per layer; empty means transformers' default: even layers slide, odd are global.
  layer_types: tuple[str, ...] = ()
  hidden_activation: str = "gelu_pytorch_tanh"

  def __post_init__(self):
    if not self.layer_types:
      types = tuple(SLIDING if i % 2 == 0 else FULL for i in range(self.num_hidden_layers))
      object.__setattr__(self, "layer_types", types)
    object.__setattr__(self, "layer_types", tuple(self.layer_types))
    if len(self.layer_types) != self.num_hidden_layers:
      raise ValueError(f"layer_types has {len(self.layer_types)} entries for "
                       f"{self.num_hidden_layers} layers")
    bad = sorted(set(self.layer_types) - {SLIDING, FULL})
    if bad:
      raise ValueError(f"unknown layer types {bad}; expected {SLIDING!r} or {FULL!r}")
    if SLIDING in self.layer_types and not self.sliding_window:
      raise ValueError("sliding_attention layers need a positive sliding_window")
    if self.num_attention_heads % self.num_key_value_heads:
      raise ValueError(f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                       f"num_key_value_heads={self.num_key_value_heads}")
    if self.hidden_activation not in _GELU_APPROXIMATE:
      raise ValueError(f"unsupported hidden_activation {self.hidden_activation!r}; "
                       f"expected one of {sorted(_GELU_APPROXIMATE)}")

  @classmethod
  def from_hf_dict(cls, cfg: dict) -> "Gemma2Config":
    """Reads a transformers `config.json` dict (4.x `rope_theta` or 5.x `rope_parameters`)."""
    if cfg.get("model_type", "gemma2") != "gemma2":
      raise ValueError(f"expected a gemma2 config, got model_type={cfg['model_type']!r}")
    if cfg.get("attention_bias"):
      raise ValueError("attention_bias=True is not supported (no Gemma-2 checkpoint uses it)")
    if cfg.get("use_bidirectional_attention"):
      raise ValueError("use_bidirectional_attention=True is not supported: SANA uses causal Gemma-2")
    rope = cfg.get("rope_parameters") or {}
    rope_type = rope.get("rope_type", "default")
    if rope_type != "default" or cfg.get("rope_scaling"):
      raise ValueError(f"only default RoPE is supported, got rope_type={rope_type!r}, "
                       f"rope_scaling={cfg.get('rope_scaling')!r}")
    heads = cfg["num_attention_heads"]
    return cls(
        vocab_size=cfg["vocab_size"],
        hidden_size=cfg["hidden_size"],
        intermediate_size=cfg["intermediate_size"],
        num_hidden_layers=cfg["num_hidden_layers"],
        num_attention_heads=heads,
        num_key_value_heads=cfg.get("num_key_value_heads", heads),
        head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads,
        rms_norm_eps=cfg.get("rms_norm_eps", 1e-6),
        rope_theta=float(rope.get("rope_theta", cfg.get("rope_theta", 10000.0))),
        query_pre_attn_scalar=float(cfg.get("query_pre_attn_scalar", 256)),
        attn_logit_softcapping=cfg.get("attn_logit_softcapping"),
        sliding_window=cfg.get("sliding_window"),
        layer_types=tuple(cfg.get("layer_types") or ()),
        hidden_activation=cfg.get("hidden_activation") or cfg.get("hidden_act") or "gelu_pytorch_tanh",
    )


def _rotate_half(x):
  half = x.shape[-1] // 2
  return jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def rope_tables(seq_len: int, head_dim: int, theta: float, dtype):
  """cos, sin: [L, head_dim], the two frequency halves repeated (transformers' non-interleaved RoPE)."""
  inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
  freqs = jnp.arange(seq_len, dtype=jnp.float32)[:, None] * inv_freq[None, :]  # [L, d/2]
  angles = jnp.concatenate([freqs, freqs], axis=-1)  # [L, d]
  return jnp.cos(angles).astype(dtype), jnp.sin(angles).astype(dtype)


class Attention(nnx.Module):
  """Grouped-query softmax attention with RoPE, query_pre_attn_scalar scaling and a logit soft-cap."""

  def __init__(self, cfg: Gemma2Config, dtype, rngs: nnx.Rngs):
    self.num_kv_heads = cfg.num_key_value_heads
    self.group = cfg.num_attention_heads // cfg.num_key_value_heads
    self.head_dim = cfg.head_dim
    self.scale = cfg.query_pre_attn_scalar ** -0.5
    self.softcap = cfg.attn_logit_softcapping
    linear = lambda n_in, n_out: nnx.Linear(n_in, n_out, use_bias=False, dtype=dtype,
                                            param_dtype=dtype, rngs=rngs)
    q_dim = cfg.num_attention_heads * cfg.head_dim
    kv_dim = cfg.num_key_value_heads * cfg.head_dim
    self.q_proj = linear(cfg.hidden_size, q_dim)
    self.k_proj = linear(cfg.hidden_size, kv_dim)
    self.v_proj = linear(cfg.hidden_size, kv_dim)
    self.o_proj = linear(q_dim, cfg.hidden_size)

  def __call__(self, x, cos, sin, mask):
    """x: [B, L, C]; cos, sin: [L, d]; mask: [B, L, L] bool (query, key) -> [B, L, C]."""
    b, n, _ = x.shape
    hk, g, d = self.num_kv_heads, self.group, self.head_dim
    # Query head h uses key/value head h // g, so heads split as (kv head, group member).
    q = self.q_proj(x).reshape(b, n, hk, g, d)
    k = self.k_proj(x).reshape(b, n, hk, d)
    v = self.v_proj(x).reshape(b, n, hk, d)
    q = q * cos[:, None, None] + _rotate_half(q) * sin[:, None, None]
    k = k * cos[:, None] + _rotate_half(k) * sin[:, None]
    logits = jnp.einsum("bqhgd,bkhd->bhgqk", q, k) * self.scale  # [B, Hk, G, L, L]
    if self.softcap is not None:
      logits = jnp.tanh(logits / self.softcap) * self.softcap
    logits = jnp.where(mask[:, None, None], logits, jnp.finfo(logits.dtype).min)
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(x.dtype)
    out = jnp.einsum("bhgqk,bkhd->bqhgd", probs, v).reshape(b, n, hk * g * d)
    return self.o_proj(out)


class MLP(nnx.Module):
  """down(gelu(gate x) * up x)."""

  def __init__(self, cfg: Gemma2Config, dtype, rngs: nnx.Rngs):
    linear = lambda n_in, n_out: nnx.Linear(n_in, n_out, use_bias=False, dtype=dtype,
                                            param_dtype=dtype, rngs=rngs)
    self.gate_proj = linear(cfg.hidden_size, cfg.intermediate_size)
    self.up_proj = linear(cfg.hidden_size, cfg.intermediate_size)
    self.down_proj = linear(cfg.intermediate_size, cfg.hidden_size)
    self.approximate = _GELU_APPROXIMATE[cfg.hidden_activation]

  def __call__(self, x):
    gate = jax.nn.gelu(self.gate_proj(x), approximate=self.approximate)
    return self.down_proj(gate * self.up_proj(x))


class DecoderLayer(nnx.Module):
  """Sandwich-normed block: x + post_norm(attn(pre_norm x)), then the same around the MLP."""

  def __init__(self, cfg: Gemma2Config, dtype, rngs: nnx.Rngs):
    norm = lambda: RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps, param_dtype=dtype, zero_centered=True)
    self.input_layernorm = norm()
    self.self_attn = Attention(cfg, dtype, rngs)
    self.post_attention_layernorm = norm()
    self.pre_feedforward_layernorm = norm()
    self.mlp = MLP(cfg, dtype, rngs)
    self.post_feedforward_layernorm = norm()

  def __call__(self, x, cos, sin, mask):
    x = x + self.post_attention_layernorm(self.self_attn(self.input_layernorm(x), cos, sin, mask))
    return x + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x)))


class Gemma2Model(nnx.Module):
  """Token ids + padding mask -> last hidden state after the final norm, [B, L, hidden]."""

  def __init__(self, config: Gemma2Config, *, dtype=jnp.float32, rngs: nnx.Rngs):
    self.config = config
    self.dtype = dtype
    self.embed_tokens = nnx.Embed(config.vocab_size, config.hidden_size, dtype=dtype,
                                  param_dtype=dtype, rngs=rngs)

    @nnx.split_rngs(splits=config.num_hidden_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def make_layers(layer_rngs):
      return DecoderLayer(config, dtype, layer_rngs)

    self.layers = make_layers(rngs)  # every parameter has a leading [num_hidden_layers] axis
    self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps, param_dtype=dtype, zero_centered=True)

  def __call__(self, input_ids, attention_mask=None):
    """input_ids: [B, L] int; attention_mask: [B, L], 1 = real token (right or left padding)."""
    cfg = self.config
    _, n = input_ids.shape
    # transformers keeps the scaled embedding in the parameter dtype (sqrt(2304) rounds in bf16).
    x = self.embed_tokens(input_ids) * jnp.asarray(math.sqrt(cfg.hidden_size), self.dtype)
    cos, sin = rope_tables(n, cfg.head_dim, cfg.rope_theta, self.dtype)

    pos = jnp.arange(n)
    causal = pos[None, :] <= pos[:, None]  # [L(query), L(key)]
    keys = jnp.ones_like(input_ids, bool) if attention_mask is None else attention_mask.astype(bool)
    full_mask = causal[None] & keys[:, None, :]  # [B, L, L]
    window = cfg.sliding_window or n
    sliding_mask = full_mask & (pos[None, :] > pos[:, None] - window)[None]
    sliding = jnp.asarray([t == SLIDING for t in cfg.layer_types])  # [num_layers]

    def run_layer(h, layer, is_sliding):
      return layer(h, cos, sin, jnp.where(is_sliding, sliding_mask, full_mask))

    x = nnx.scan(run_layer, in_axes=(nnx.Carry, 0, 0), out_axes=nnx.Carry)(x, self.layers, sliding)
    return self.norm(x)
