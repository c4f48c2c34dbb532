"""LoRA training (issue 12): only the adapter trains and is saved; the frozen base is untouched and
named by the checkpoints; resume continues the same losses and refuses another base in one line;
DreamBooth captions and prior preservation. Micro-sized configs; the loop's step compiles once
per module (persistent cache)."""
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx
from PIL import Image

from sana_jax.configs.base import lora_config
from sana_jax.convert.checkpoints import load_transformer, save_transformer
from sana_jax.models import lora as lora_layers
from sana_jax.optim.registry import build_optimizer
from sana_jax.training import adapter, checkpointing, dreambooth, loop, objective, resume, train_state
from sana_jax.training.dreambooth import dreambooth_config
from tests.training.helpers import fixed_batch
from tests.training.test_loop import compilation_cache, micro_config  # noqa: F401 - the module's XLA cache


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
  """A base model saved as our checkpoint (random weights: what is checked is what moves)."""
  return str(save_transformer(train_state.build_model(micro_config().model, 3),
                              tmp_path_factory.mktemp("base") / "model"))


def lora_micro(base, **train):
  cfg = micro_config(**{"init_from": base, "num_steps": 4, **train})
  cfg.lora = lora_config(rank=2, alpha=2.0)
  cfg.dreambooth = dreambooth_config()
  cfg.optimizer.update(learning_rate=1e-2)
  cfg.sampling.update(num_images=0, num_eval_images=0)
  return cfg


def _nbytes(tree):
  return sum(int(np.prod(x.shape)) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def test_optimiser_state_covers_the_adapter_only(base_dir):
  cfg = lora_micro(base_dir)
  tx = build_optimizer(cfg.optimizer)
  _, state, _ = train_state.create_train_state(cfg, tx)
  _, want_adapter, base = adapter.abstract_split(cfg)
  paths = lambda tree: [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
  assert paths(state.params) == paths(want_adapter)
  arrays = [x for x in jax.tree.leaves(state.opt_state) if x.ndim]
  # AdamW: one first and one second moment per adapter array, nothing else of any size.
  assert len(arrays) == 2 * len(jax.tree.leaves(state.params))
  assert _nbytes(arrays) == 2 * _nbytes(state.params)
  assert _nbytes(state.params) < _nbytes(base) / 10


def test_steps_lower_the_loss_move_the_adapter_and_leave_the_base_as_loaded(base_dir):
  """With adapter dropout on (the step writes the dropout key inside the gradient's trace)."""
  cfg = lora_micro(base_dir)
  cfg.lora.update(rank=4, alpha=4.0, dropout=0.1)
  cfg.train.caption_dropout = 0.0
  tx = build_optimizer(cfg.optimizer)
  graphdef, state, _ = train_state.create_train_state(cfg, tx)
  base = adapter.load_base(cfg)
  before = jax.tree.map(np.asarray, base.params)
  update = jax.jit(loop.step.make_train_step(graphdef, tx, cfg.train, null_text=jnp.zeros((6, 16)), seed=0,
                                             adapter_dropout=adapter.has_dropout(cfg)), donate_argnums=(0,))
  batch = fixed_batch(cfg, height=6)

  @jax.jit
  def loss(params):  # the same 4 noise draws every time; no dropout outside the step
    model = nnx.merge(graphdef, params, base.params)
    return jnp.mean(jnp.stack([objective.flow_matching_loss(model, batch, jax.random.key(k), null_text=None,
                                                            flow_shift=3.0)[0] for k in range(4)]))
  start = jax.tree.map(np.asarray, state.params)
  first = float(loss(state.params))
  for _ in range(30):
    state, _ = update(state, batch, base.params)
  assert float(loss(state.params)) < 0.9 * first
  for got, want in zip(jax.tree.leaves(base.params), jax.tree.leaves(before)):
    np.testing.assert_array_equal(np.asarray(got), want)  # still readable: never donated
  moved = [not np.array_equal(np.asarray(a), b) for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(start))]
  assert all(moved)


def test_a_bfloat16_base_stays_bfloat16(base_dir):
  cfg = lora_micro(base_dir)
  cfg.model.param_dtype = "bfloat16"
  base = adapter.load_base(cfg)
  weights = [x for p, x in jax.tree_util.tree_flatten_with_path(base.params)[0]
             if "lora_" not in jax.tree_util.keystr(p)]  # the adapters' fixed fp32 scales aside
  assert len(weights) == len(jax.tree.leaves(nnx.state(load_transformer(base_dir), nnx.Param)))
  assert {x.dtype for x in weights} == {jnp.dtype(jnp.bfloat16)}


def test_fingerprint_names_the_weights_not_their_dtype_or_copy(base_dir):
  model = load_transformer(base_dir)
  params = nnx.state(model, nnx.Param)
  bf16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
  assert adapter.fingerprint(params) == adapter.fingerprint(bf16) == adapter.fingerprint(jax.tree.map(jnp.copy, params))
  first = jax.tree.leaves(params)[0]
  nudged = jax.tree.map(lambda x: x.at[(0,) * x.ndim].add(0.5) if x is first else x, params)
  assert adapter.fingerprint(nudged) != adapter.fingerprint(params)


def test_a_lora_config_without_a_base_is_one_line():
  cfg = lora_micro("")
  with pytest.raises(ValueError, match="--config.train.init_from") as e:
    adapter.load_base(cfg)
  assert "\n" not in str(e.value)


@pytest.fixture(scope="module")
def lora_runs(base_dir, tmp_path_factory):
  """(reference workdir: 4 steps in one go, resumed workdir: 2 steps then 2 more)."""
  reference = tmp_path_factory.mktemp("reference")
  loop.train_and_evaluate(lora_micro(base_dir), str(reference))
  resumed = tmp_path_factory.mktemp("resumed")
  loop.train_and_evaluate(lora_micro(base_dir, num_steps=2), str(resumed))
  loop.train_and_evaluate(lora_micro(base_dir), str(resumed))
  return reference, resumed


def _losses(workdir):
  return {r["step"]: r["loss"] for r in map(json.loads, (workdir / "metrics.jsonl").read_text().splitlines())}


def test_checkpoints_hold_the_adapter_and_a_pointer_to_the_base(lora_runs, base_dir):
  reference, _ = lora_runs
  step_dir = reference / "checkpoints" / "4"
  saved = ocp.StandardCheckpointer().restore(step_dir / "state")
  names = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(saved["params"])[0]]
  assert names and all("lora" in n for n in names), names
  cfg = lora_micro(base_dir)
  _, _, base = adapter.abstract_split(cfg)
  assert _nbytes(saved) < _nbytes(base) / 5  # adapter + its optimiser state, no base weight
  pointer = json.loads((step_dir / "base" / "metadata").read_text())
  assert pointer["path"] == os.path.abspath(base_dir)
  assert pointer["fingerprint"] == adapter.fingerprint(nnx.state(load_transformer(base_dir), nnx.Param))


def test_resume_continues_the_uninterrupted_loss_sequence(lora_runs):
  reference, resumed = lora_runs
  assert sorted(_losses(reference)) == [1, 2, 3, 4]
  assert _losses(resumed) == _losses(reference)


def test_resuming_against_another_base_is_refused_in_one_line(lora_runs, tmp_path):
  _, resumed = lora_runs
  workdir = tmp_path / "run"
  shutil.copytree(resumed, workdir)
  other = save_transformer(train_state.build_model(micro_config().model, 4), tmp_path / "other")
  with pytest.raises(resume.ResumeError, match="fingerprint") as e:
    loop.train_and_evaluate(lora_micro(str(other), num_steps=6), str(workdir))
  assert "\n" not in str(e.value) and str(other) in str(e.value)
  assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "4"]


def test_a_changed_rank_stops_the_resume(lora_runs, base_dir, tmp_path):
  _, resumed = lora_runs
  workdir = tmp_path / "run"
  shutil.copytree(resumed, workdir)
  cfg = lora_micro(base_dir, num_steps=6)
  cfg.lora.rank = 3
  with pytest.raises(resume.ResumeError, match="lora.rank"):
    loop.train_and_evaluate(cfg, str(workdir))


def test_a_lora_workdir_loads_as_the_base_with_its_trained_adapter(lora_runs, base_dir):
  reference, _ = lora_runs
  model = load_transformer(str(reference))
  base = load_transformer(base_dir)
  cfg = lora_micro(base_dir)
  batch = fixed_batch(cfg, size=2, height=6)
  args = (jnp.asarray(batch["latents"]), jnp.full((2,), 500.0), jnp.asarray(batch["text"]),
          jnp.asarray(batch["text_mask"]))
  assert not np.allclose(np.asarray(model(*args)), np.asarray(base(*args)), atol=1e-6)
  _, adapter_params, _ = adapter.split(model)
  saved = ocp.StandardCheckpointer().restore(reference / "checkpoints" / "4" / "state")["params"]
  for got, want in zip(jax.tree.leaves(adapter_params), jax.tree.leaves(saved)):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  half = load_transformer(str(reference), dtype=jnp.bfloat16)  # sampling in bfloat16
  assert {x.dtype for x in jax.tree.leaves(nnx.state(half, lora_layers.BASE))} == {jnp.dtype(jnp.bfloat16)}
  assert {x.dtype for x in jax.tree.leaves(nnx.state(half, nnx.LoRAParam))} == {jnp.dtype(jnp.float32)}


def test_a_training_workdir_is_a_base(tmp_path):
  base_run = tmp_path / "base_run"
  cfg = micro_config()
  _, state, _ = train_state.create_train_state(cfg, build_optimizer(cfg.optimizer))
  ckpt = checkpointing.Checkpointer(base_run / "checkpoints", 1, async_save=False)
  ckpt.save(1, state, cfg, {"hosts": [{}]})
  ckpt.close()
  loaded = adapter.load_base(lora_micro(str(base_run)))
  trained = nnx.state(load_transformer(str(base_run)), nnx.Param)
  assert loaded.info["fingerprint"] == adapter.fingerprint(trained)


def test_prior_preservation_loss_is_instance_mean_plus_weighted_class_mean():
  class Echo(nnx.Module):  # velocity = 0: the error is (noise - x0)^2
    def __call__(self, x, t, text, mask):
      return jnp.zeros_like(x)
  rng = np.random.default_rng(0)
  batch = {"latents": rng.normal(size=(4, 2, 2, 3)).astype(np.float32),
           "text": np.zeros((4, 1, 2), np.float32), "text_mask": np.ones((4, 1), np.int32),
           "prior": np.array([0, 0, 1, 1])}
  key = jax.random.key(1)
  kw = dict(null_text=np.zeros((1, 2), np.float32), flow_shift=3.0)
  weighted, _ = objective.flow_matching_loss(Echo(), batch, key, prior_loss_weight=0.25, **kw)
  plain = {k: v for k, v in batch.items() if k != "prior"}
  noise = jax.random.normal(jax.random.split(key, 3)[1], (4, 2, 2, 3))
  per = np.mean(np.square(np.asarray(noise) - batch["latents"]), axis=(1, 2, 3))
  np.testing.assert_allclose(float(weighted), per[:2].mean() + 0.25 * per[2:].mean(), rtol=1e-6)
  np.testing.assert_allclose(float(objective.flow_matching_loss(Echo(), plain, key, **kw)[0]), per.mean(), rtol=1e-6)


def _instance_folder(path, count=4):
  path.mkdir()
  for i in range(count):
    Image.fromarray(np.full((24, 24, 3), (40 * i, 200, 30), np.uint8)).save(path / f"img_{i}.png")
  return path


def test_an_instance_prompt_captions_every_image_and_class_images_keep_their_own(tmp_path):
  from sana_jax.data.folder import FolderSource
  folder = _instance_folder(tmp_path / "inst")
  (folder / "img_0.txt").write_text("a red square\n")
  source = FolderSource(str(folder), caption="a sks shape")
  assert len(source) == 4 and set(source.captions) == {"a sks shape"}
  classes = FolderSource(str(folder), missing_caption="a shape")  # captions beside images win
  assert classes.captions == ["a red square", "a shape", "a shape", "a shape"]
  assert len(FolderSource(str(folder))) == 1


@pytest.mark.slow  # 30 s on 2 loaded cores: a loop run that also samples the class images
def test_prior_preservation_draws_class_images_and_mixes_them_in(base_dir, tmp_path):
  cfg = lora_micro(base_dir, num_steps=2)
  cfg.data.update(name="folder", path=str(_instance_folder(tmp_path / "inst")), instance_prompt="a sks shape")
  cfg.dreambooth.update(class_prompt="a shape", prior_loss_weight=1.0, num_class_images=6)
  cfg.sampling.update(num_images=2)
  workdir = tmp_path / "run"
  loop.train_and_evaluate(cfg, str(workdir))
  drawn = sorted(os.listdir(workdir / "class_images"))
  assert drawn == [f"class_{i:05d}.{ext}" for i in range(6) for ext in ("png", "txt")]
  assert (workdir / "class_images" / "class_00005.txt").read_text() == "a shape\n"
  data = dreambooth.PriorPreservationData(
      loop.pipeline.make_dataset(cfg.data, 4, 0), dreambooth.class_dataset(cfg, str(workdir / "class_images"), 0, 0, 1))
  batch = next(data)
  assert list(batch["prior"]) == [0, 0, 0, 0, 1, 1, 1, 1]
  assert list(batch["captions"]) == ["a sks shape"] * 4 + ["a shape"] * 4
  assert loop.encode_batch(batch, *loop.build_codecs(cfg))["prior"].shape == (8,)
  assert sorted(os.listdir(workdir / "checkpoints")) == ["2"]


def test_every_command_of_the_lora_docs_parses():
  import concurrent.futures
  import subprocess
  import sys

  from tests.training.test_readme_commands import _PARSE, ROOT, readme_commands
  commands = readme_commands(os.path.join(ROOT, "docs", "lora.md"))
  assert {a[0] for a in commands} >= {"sana_jax.train", "sana_jax.plan", "sana_jax.preprocess", "sana_jax.sample"}
  env = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"}

  def parse(argv):
    return argv, subprocess.run([sys.executable, "-c", _PARSE, json.dumps(argv)], capture_output=True,
                                text=True, env=env, cwd=ROOT, timeout=300)
  with concurrent.futures.ThreadPoolExecutor(3) as pool:
    for argv, out in pool.map(parse, commands):
      assert out.returncode == 0 and "parsed" in out.stdout, f"{argv}\n{out.stderr[-2000:]}"
