"""LoRA layers (sana_jax/models/lora.py) on the tiny transformer: targets, the adapter product against
the base model with the update written into its kernels by hand, several weighted adapters, fuse /
unfuse, remat and the stacked layer axis, bf16 base weights, dropout, FSDP specs of the adapter."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sana_jax import configs
from sana_jax.configs.base import lora_config
from sana_jax.models import lora
from sana_jax.models.transformer import SanaTransformer
from sana_jax.training import sharding
from tests.training.helpers import tiny_model_config


@nnx.jit
def _run(model, *inputs):
  return model(*inputs)


def _cfg(**kw):
  cfg = tiny_model_config()
  cfg.update(kw)
  return cfg


def _inputs():
  keys = jax.random.split(jax.random.key(1), 2)
  return (jax.random.normal(keys[0], (2, 8, 8, 48)), jnp.array([10.0, 700.0]),
          jax.random.normal(keys[1], (2, 16, 32)), jnp.ones((2, 16)).at[1, 12:].set(0))


def _random_b(model, seed=5, std=0.1):
  """Non-zero B (a trained adapter), so the adapter changes the output."""
  key = jax.random.key(seed)
  for layer in lora.lora_layers(model).values():
    for name in layer.lora_B:
      key, sub = jax.random.split(key)
      v = layer.lora_B[name]
      v[...] = jax.random.normal(sub, v[...].shape) * std


def _model(targets=("to_q", "to_k", "to_v", "to_out.0"), seed=0, rank=4, alpha=8.0, **kw):
  model = SanaTransformer(_cfg(**kw), rngs=nnx.Rngs(seed))
  lora.add_lora(model, lora_config(rank=rank, alpha=alpha, target_modules=targets), rngs=nnx.Rngs(3))
  _random_b(model)
  return model


def _by_hand(model, weights):
  """The base model with weight * alpha/r * A B added into each kernel, built without lora.py's fuse."""
  base = SanaTransformer(model.cfg.as_configdict(), rngs=nnx.Rngs(0))
  flat = dict(nnx.to_flat_state(nnx.state(model, nnx.LoRAParam)))
  kernels = {p[:-1]: v for p, v in nnx.to_flat_state(nnx.state(base, nnx.Param))}
  for path, a in flat.items():
    if path[-2] != "lora_A" or path[-1] not in weights:
      continue
    b = flat[path[:-2] + ("lora_B", path[-1])][...]
    info = lora.adapters(model)[path[-1]]
    scale = info["alpha"] / info["rank"] * weights[path[-1]]
    k = kernels[path[:-2]]
    k[...] = k[...] + scale * np.matmul(np.asarray(a[...]), np.asarray(b))
  return base


def test_zero_b_keeps_the_output_and_adapters_equal_the_kernel_update():
  inputs = _inputs()
  base = SanaTransformer(_cfg(), rngs=nnx.Rngs(0))
  model = SanaTransformer(_cfg(), rngs=nnx.Rngs(0))
  lora.add_lora(model, lora_config(), rngs=nnx.Rngs(3))
  np.testing.assert_array_equal(_run(model, *inputs), _run(base, *inputs))  # B = 0 at init
  _random_b(model)
  out = _run(model, *inputs)
  assert float(jnp.abs(out - _run(base, *inputs)).max()) > 0.1
  # measured 1.2e-6 (fp32 reassociation); the adapters' own effect is ~1
  np.testing.assert_allclose(out, _run(_by_hand(model, {"default": 1.0}), *inputs), atol=1e-5)
  assert len(jax.tree.leaves(nnx.state(model, lora.BASE))) == len(jax.tree.leaves(nnx.state(base, nnx.Param)))


def test_targets_by_name_suffix_regex_and_layer():
  cfg = _cfg()
  names = lambda tm: sorted(n for t, m in lora.match_targets(cfg, tm).items()
                            for n, on in zip(t.names(), m) if on)
  assert names(["attn2.to_q"]) == ["transformer_blocks.0.attn2.to_q", "transformer_blocks.1.attn2.to_q"]
  assert len(names(["to_q", "to_k", "to_v", "to_out.0"])) == 16
  assert names(r"transformer_blocks\.1\.ff\.conv_(inverted|point)") == [
      "transformer_blocks.1.ff.conv_inverted", "transformer_blocks.1.ff.conv_point"]
  assert names(["time_embed.linear", "proj_out"]) == ["proj_out", "time_embed.linear"]
  with pytest.raises(ValueError, match=r"\['to_qq'\] match no layer") as err:
    lora.match_targets(cfg, ["to_q", "to_qq"])
  assert "\n" not in str(err.value)
  # A layer the regex leaves out gets scale 0: block 1's to_q is the base map.
  model = _model(r"transformer_blocks\.0\.attn1\.to_q")
  np.testing.assert_array_equal(model.blocks.attn.to_q.lora_scale["default"][...], [2.0, 0.0])


def test_several_adapters_with_weights_fuse_unfuse_and_unload():
  inputs = _inputs()
  model = _model()
  base_out = _run(SanaTransformer(_cfg(), rngs=nnx.Rngs(0)), *inputs)
  lora.add_lora(model, lora_config(rank=2, alpha=2.0, target_modules=("to_v", "ff.conv_point")),
                rngs=nnx.Rngs(4), adapter_name="style")
  _random_b(model, seed=7)
  lora.set_adapters(model, ["default", "style"], [0.7, -1.3])
  out = _run(model, *inputs)
  np.testing.assert_allclose(out, _run(_by_hand(model, {"default": 0.7, "style": -1.3}), *inputs), atol=1e-5)
  lora.fuse_lora(model)
  assert all(layer.lora_fused for layer in lora.lora_layers(model).values())
  np.testing.assert_allclose(_run(model, *inputs), out, atol=2e-6)  # measured 1.0e-6
  with pytest.raises(ValueError, match="unfuse_lora"):
    lora.set_adapters(model, "style")
  lora.unfuse_lora(model)
  np.testing.assert_allclose(_run(model, *inputs), out, atol=2e-6)
  lora.set_adapters(model, "style")
  np.testing.assert_allclose(_run(model, *inputs), _run(_by_hand(model, {"style": 1.0}), *inputs), atol=1e-5)
  lora.delete_adapter(model, "default")
  assert set(lora.adapters(model)) == {"style"}
  assert not isinstance(model.blocks.attn.to_q, lora.LoRALinear)
  lora.unload_lora(model)
  assert lora.adapters(model) == {} and not lora.lora_layers(model)
  np.testing.assert_allclose(_run(model, *inputs), base_out, atol=2e-6)  # unfuse rounding only
  with pytest.raises(ValueError, match="no LoRA adapter named"):
    lora.set_adapters(model, "gone")


def test_remat_and_scan_give_the_same_output_and_adapter_gradients():
  inputs = _inputs()
  targets = ("to_q", "attn2.to_k", "ff.conv_inverted", "ff.conv_point", "time_embed.linear", "proj_out")
  loss = lambda m: jnp.mean(m(*inputs) ** 2)
  grad = nnx.jit(lambda m: nnx.grad(loss, argnums=nnx.DiffState(0, nnx.LoRAParam))(m))
  plain = _model(targets)
  assert plain.blocks.ffn.conv_inverted.lora_A["default"][...].shape == (2, 64, 4)  # [depth, in, r]
  remat = _model(targets, remat_policy="full")  # "dots" and the others differ only in what is saved
  np.testing.assert_allclose(_run(remat, *inputs), _run(plain, *inputs), atol=1e-6)
  g_plain, g_remat = grad(plain), grad(remat)
  assert {p[-2] for p, _ in nnx.to_flat_state(g_remat)} == {"lora_A", "lora_B"}
  for a, b in zip(jax.tree.leaves(g_plain), jax.tree.leaves(g_remat)):
    np.testing.assert_allclose(a, b, atol=1e-7)


def test_bf16_base_keeps_fp32_adapters():
  inputs = _inputs()
  model = _model(dtype="bfloat16", param_dtype="bfloat16")
  layer = model.blocks.attn.to_q
  assert layer.kernel[...].dtype == jnp.bfloat16 and layer.lora_A["default"][...].dtype == jnp.float32
  ref = _model()
  cast = jax.tree.map(lambda x: x.astype(jnp.float32), nnx.state(model, nnx.Param))
  nnx.update(ref, cast)  # the same bf16 values, computed in fp32
  out = _run(model, *inputs)
  assert out.dtype == jnp.float32
  err = float(jnp.abs(out - _run(ref, *inputs)).max() / jnp.abs(_run(ref, *inputs)).max())
  assert err < 0.05, err  # bf16 compute; measured 1.6e-2


def test_dropout_only_in_train_mode_with_a_key():
  inputs = _inputs()
  model = SanaTransformer(_cfg(), rngs=nnx.Rngs(0))
  lora.add_lora(model, lora_config(rank=4, dropout=0.5), rngs=nnx.Rngs(3))
  _random_b(model)
  assert model.blocks.attn.to_q.lora_rng["default"][...].shape == (2, 2)
  ref = _run(model, *inputs)
  model.train()
  lora.set_dropout_key(model, jax.random.key(0))
  a = _run(model, *inputs)
  lora.set_dropout_key(model, jax.random.key(1))
  b = _run(model, *inputs)
  assert float(jnp.abs(a - ref).max()) > 1e-3 and float(jnp.abs(a - b).max()) > 1e-3
  model.eval()
  np.testing.assert_array_equal(_run(model, *inputs), ref)


def test_fsdp_shards_the_adapter_like_its_kernel_with_the_same_output():
  inputs = _inputs()
  model = _model(("to_q", "to_out.0", "ff.conv_inverted"))
  names = lambda v: v.get_metadata()["out_sharding"]
  q, out = model.blocks.attn.to_q, model.blocks.attn.to_out
  assert names(q.lora_A["default"]) == ("layers", "embed", None)
  assert names(q.lora_B["default"]) == ("layers", None, "heads")
  assert names(out.lora_A["default"]) == ("layers", "heads", None)
  assert names(q.lora_scale["default"]) == ("layers",)
  mesh_cfg = configs.get_config("tiny").mesh
  mesh_cfg.update(data=1, fsdp=-1, tensor=1)
  mesh = sharding.create_mesh(mesh_cfg)
  assert mesh.shape["fsdp"] == 8, "tests/conftest.py provides 8 CPU devices"
  expected = _run(model, *inputs)
  graphdef, state = nnx.split(model)
  placed = jax.device_put(state, sharding.tree_shardings(state, mesh, sharding.axis_rules(mesh_cfg)))
  flat = dict(nnx.to_flat_state(placed))
  a = flat[("blocks", "attn", "to_q", "lora_A", "default")][...]
  kernel = flat[("blocks", "attn", "to_q", "kernel")][...]
  assert a.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", None)
  assert tuple(kernel.sharding.spec)[:2] == (None, "fsdp")  # the kernel's "embed" axis, as A's
  np.testing.assert_allclose(_run(nnx.merge(graphdef, placed), *inputs), expected, atol=1e-5)
