"""attention_impl="auto" on an accelerator self-checks the Pallas kernels and falls back to XLA.

No accelerator here: the backend probe (`selection.accelerator`) is patched to say "gpu", and the
kernel the check runs is patched to raise or to be wrong. The real kernels (interpreted on the
CPU) must pass the same check.
"""
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sana_jax import kernels
from sana_jax.kernels import reference, selection


@pytest.fixture
def fake_gpu(monkeypatch):
  """The probe reports a GPU; the check's per-process memory starts empty and is restored."""
  monkeypatch.setattr(selection, "accelerator", lambda: "gpu")
  monkeypatch.setattr(selection, "_passed", set())
  monkeypatch.setattr(selection, "_failure", [])


def _qkv(shape):
  keys = jax.random.split(jax.random.PRNGKey(0), 3)
  return [jax.random.normal(key, shape, jnp.float32) for key in keys]


def _model_like_call(q, k, v):
  """The first "auto" call is inside a jit and a grad, as in a train step."""
  loss = lambda q: jnp.sum(kernels.linear_attention(q, k, v, eps=1e-15, impl="auto") ** 2)
  return jax.jit(jax.value_and_grad(loss))(q)


def test_a_kernel_compile_error_falls_back_to_xla_with_one_warning(fake_gpu, monkeypatch):
  def broken(*args, **kwargs):
    raise RuntimeError("Mosaic GPU lowering failed: unsupported layout")
  monkeypatch.setattr(selection, "relu_linear_attention_pallas", broken)
  monkeypatch.setattr(kernels, "relu_linear_attention_pallas", broken)
  q, k, v = _qkv((1, 12, 2, 8))
  with pytest.warns(RuntimeWarning, match="RuntimeError: Mosaic GPU lowering failed") as record:
    value, grad = _model_like_call(q, k, v)
  assert len(record) == 1 and "XLA version for the rest of this process" in str(record[0].message)
  ref_value, ref_grad = jax.value_and_grad(
      lambda q: jnp.sum(reference.relu_linear_attention_reference(q, k, v) ** 2))(q)
  np.testing.assert_allclose(value, ref_value, rtol=1e-6)  # jit vs eager rounding: ~1e-6 of max
  np.testing.assert_allclose(grad, ref_grad, atol=1e-5 * float(jnp.max(jnp.abs(ref_grad))))
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # no second warning, whatever the layout
    assert selection.resolve_impl("auto", 2, 8, jnp.float32) == "xla"
    assert selection.resolve_impl("auto", 4, 16, jnp.bfloat16) == "xla"
  with pytest.raises(RuntimeError, match="Mosaic GPU lowering failed"):  # "pallas" fails loudly
    kernels.linear_attention(q, k, v, impl="pallas")


def test_kernels_that_differ_from_the_reference_are_not_used(fake_gpu, monkeypatch):
  def wrong(q, k, v, eps=1e-15):
    return reference.relu_linear_attention_reference(q, k, v, eps) * 1.001
  monkeypatch.setattr(selection, "relu_linear_attention_pallas", wrong)
  with pytest.warns(RuntimeWarning, match=r"values differ from the jnp reference \(out 1.0e-03"):
    assert selection.resolve_impl("auto", 2, 8, jnp.float32) == "xla"


def test_kernels_that_pass_are_used_and_checked_once_per_layout(fake_gpu, monkeypatch):
  calls = []
  real = selection.compare_with_reference
  monkeypatch.setattr(selection, "compare_with_reference",
                      lambda *a, **kw: calls.append(a[2:5]) or real(*a, **kw))
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    for _ in range(2):  # the real kernels, interpreted on the CPU
      assert selection.resolve_impl("auto", 3, 8, jnp.float32) == "pallas"
    assert selection.resolve_impl("auto", 3, 8, jnp.bfloat16) == "pallas"
  assert calls == [(3, 8, jnp.float32), (3, 8, jnp.bfloat16)]


def test_no_check_and_xla_on_the_cpu(monkeypatch):
  monkeypatch.setattr(selection, "compare_with_reference", None)  # would fail if called
  assert selection.resolve_impl("auto", 70, 32, jnp.float32) == "xla"


def test_the_check_ignores_the_callers_mesh_and_trace(fake_gpu):
  mesh = jax.make_mesh((1,), ("data",))
  with jax.set_mesh(mesh):
    impls = []
    jax.jit(lambda x: impls.append(selection.resolve_impl("auto", 2, 8, jnp.float32)) or x)(1.0)
  assert impls == ["pallas"] and not selection._failure


def test_auto_runs_xla_on_a_gpu_from_jax_0_11(fake_gpu, monkeypatch):
  monkeypatch.setattr(jax, "__version_info__", (0, 11, 2))
  monkeypatch.setattr(selection, "compare_with_reference", None)  # no check: nothing to check
  assert selection.resolve_impl("auto", 70, 32, jnp.bfloat16) == "xla"
  monkeypatch.setattr(selection, "accelerator", lambda: "tpu")
  monkeypatch.setattr(selection, "compare_with_reference", lambda *a, **kw: (True, {}, 1e-5))
  assert selection.resolve_impl("auto", 70, 32, jnp.bfloat16) == "pallas"
