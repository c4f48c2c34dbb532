"""The latent cache: `python -m sana_jax.preprocess` output equals on-the-fly encoding and feeds the pipeline."""
import json
import os
import shutil
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest
from PIL import Image

from sana_jax.data import buckets, cache, pipeline, shapes
from sana_jax.models.simple_codecs import SpaceToDepthAutoencoder, WordEmbeddingTextEncoder

NUM_EXAMPLES = 24
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _codecs():
  """The built-in codecs `preprocess --autoencoder=builtin --text_encoder=builtin` uses (configs/tiny.py)."""
  from sana_jax import configs
  scale = configs.get_config("tiny").codecs.scaling_factor
  return SpaceToDepthAutoencoder(4, scaling_factor=scale), WordEmbeddingTextEncoder(shapes.vocabulary(), 32, 16)


def _shapes_cfg(count=NUM_EXAMPLES):
  c = pipeline.default_data_config()
  c.shapes_num_examples = count
  return c


def _cache_cfg(path):
  c = pipeline.default_data_config()
  c.update(name="cache", path=str(path))
  return c


def _encode_on_the_fly(images, captions, max_length=16):
  autoencoder, text_encoder = _codecs()
  text, mask = text_encoder.encode([str(c) for c in captions], None, max_length)
  return np.asarray(autoencoder.encode(images)) * autoencoder.scaling_factor, np.asarray(text), np.asarray(mask)


@pytest.fixture(scope="module")
def shapes_cache(tmp_path_factory):
  """The CLI run on 24 shapes examples: 5 per encoder call (a padded last batch), 7 per shard."""
  out = tmp_path_factory.mktemp("cache") / "shapes"
  result = subprocess.run(
      [sys.executable, "-m", "sana_jax.preprocess", f"--out={out}", f"--data.shapes_num_examples={NUM_EXAMPLES}",
       "--batch_size=5", "--shard_size=7"],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"wrote {NUM_EXAMPLES} examples (0 skipped)" in result.stdout
  return out


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def test_preprocess_writes_shards_and_a_manifest_describing_them(shapes_cache):
  manifest = json.loads((shapes_cache / cache.MANIFEST).read_text())
  assert manifest["count"] == NUM_EXAMPLES and manifest["scaling_factor"] == _codecs()[0].scaling_factor
  [bucket] = manifest["buckets"]
  assert bucket["latent_shape"] == [8, 8, 48] and bucket["image_size"] == [32, 32]
  assert [s["count"] for s in bucket["shards"]] == [7, 7, 7, 3]
  assert (manifest["text_length"], manifest["text_channels"]) == (16, 32)
  assert manifest["autoencoder"]["class"] == "SpaceToDepthAutoencoder"


def test_cache_batches_equal_batches_encoded_on_the_fly(shapes_cache):
  images = pipeline.make_dataset(_shapes_cfg(), global_batch_size=8, seed=3)
  cached = pipeline.make_dataset(_cache_cfg(shapes_cache), global_batch_size=8, seed=3)
  for _ in range(4):  # 3 batches per epoch: crosses into the second epoch's shuffle
    expected, got = next(images), next(cached)
    latents, text, mask = _encode_on_the_fly(expected["images"], expected["captions"])
    np.testing.assert_array_equal(got["latents"], latents)
    np.testing.assert_array_equal(got["text"], text)
    np.testing.assert_array_equal(got["text_mask"], mask)
    for key in ("captions", "specs", "indices"):
      np.testing.assert_array_equal(got[key], expected[key])


def test_cache_iterator_resumes_with_the_same_batches(shapes_cache):
  iterator = pipeline.make_dataset(_cache_cfg(shapes_cache), 8, seed=0)
  _take(iterator, 2)
  state = iterator.get_state()
  expected = _take(iterator, 3)
  resumed = pipeline.make_dataset(_cache_cfg(shapes_cache), 8, seed=0)
  resumed.set_state(state)
  for a, b in zip(expected, _take(resumed, 3)):
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])


def test_cache_holds_the_null_prompt_embedding_for_caption_dropout(shapes_cache):
  text, mask = cache.CacheSource(str(shapes_cache)).null_embedding()
  expected_text, expected_mask = _codecs()[1].null_embedding()
  np.testing.assert_array_equal(text, expected_text)
  np.testing.assert_array_equal(mask, expected_mask)


def test_bfloat16_storage_reads_back_the_rounded_values(tmp_path):
  source = shapes.ShapesSource(4, 32, seed=0)
  autoencoder, text_encoder = _codecs()
  cache.write_cache(str(tmp_path / "c"), source, _shapes_cfg(4), autoencoder, text_encoder,
                    max_text_length=16, storage_dtype="bfloat16", progress=False)
  records = cache.CacheSource(str(tmp_path / "c"))
  for i in range(4):
    example = source[i]
    latents, text, mask = _encode_on_the_fly(example["image"][None] / 127.5 - 1.0, [example["caption"]])
    got = records[i]
    assert got["latents"].dtype == np.float32
    np.testing.assert_array_equal(got["latents"], latents[0].astype(ml_dtypes.bfloat16).astype(np.float32))
    np.testing.assert_array_equal(got["text"], text[0].astype(ml_dtypes.bfloat16).astype(np.float32))
    np.testing.assert_array_equal(got["text_mask"], mask[0])


def test_dcae_cache_holds_the_encoder_latents_times_its_scaling_factor(tmp_path):
  torch = pytest.importorskip("torch")
  from sana_jax.convert.autoencoder import load_autoencoder
  from tests.models.autoencoder_builders import TINY_CONFIG, save_tiny_vae_folder

  reference = save_tiny_vae_folder(str(tmp_path / "vae"))
  autoencoder = load_autoencoder(str(tmp_path / "vae"))
  data_cfg = _shapes_cfg(5)
  source = shapes.ShapesSource(5, 32, seed=0)
  manifest = cache.write_cache(str(tmp_path / "c"), source, data_cfg, autoencoder, _codecs()[1],
                               max_text_length=16, batch_size=5, progress=False)
  assert manifest["scaling_factor"] == pytest.approx(TINY_CONFIG["scaling_factor"])
  assert manifest["buckets"][0]["latent_shape"] == [16, 16, 4]
  records = cache.CacheSource(str(tmp_path / "c"))
  images = np.stack([source[i]["image"] for i in range(5)]).astype(np.float32) / 127.5 - 1.0  # [5, 32, 32, 3]
  ours = np.asarray(autoencoder.encode(images)) * TINY_CONFIG["scaling_factor"]
  with torch.no_grad():
    theirs = reference.encode(torch.from_numpy(images.transpose(0, 3, 1, 2))).latent.numpy()
  theirs = theirs.transpose(0, 2, 3, 1) * TINY_CONFIG["scaling_factor"]
  for i in range(5):
    np.testing.assert_array_equal(records[i]["latents"], ours[i])
    np.testing.assert_allclose(records[i]["latents"], theirs[i], atol=1e-5)


def _write_png(path, height, width, seed):
  pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
  Image.fromarray(pixels).save(path)
  path.with_suffix(".txt").write_text(f"one red circle {seed}")


def test_multi_scale_folder_keeps_a_latent_shape_per_bucket_and_counts_unreadable_images(tmp_path):
  folder = tmp_path / "images"
  folder.mkdir()
  sizes = {"wide": (32, 64), "tall": (64, 32), "square": (32, 32)}
  for n, (name, (h, w)) in enumerate(sorted(sizes.items())):
    for k in range(3):
      _write_png(folder / f"{name}{k}.png", h, w, 10 * n + k)
  (folder / "garbage.png").write_bytes(b"not an image")  # the folder scan skips it
  _write_png(folder / "truncated.png", 32, 32, 99)
  data = (folder / "truncated.png").read_bytes()
  (folder / "truncated.png").write_bytes(data[:len(data) // 2])  # header fine, pixels cut: fails on load
  data_cfg = pipeline.default_data_config()
  data_cfg.update(name="folder", path=str(folder), multi_scale=True, size_multiple=8)
  source = pipeline.build_source(data_cfg)
  autoencoder, text_encoder = _codecs()
  manifest = cache.write_cache(str(tmp_path / "c"), source, data_cfg, autoencoder, text_encoder,
                               max_text_length=16, batch_size=2, progress=False)
  assert manifest["skipped"] == 2 and manifest["count"] == 9
  assert sorted(tuple(b["latent_shape"]) for b in manifest["buckets"]) == [(6, 12, 48), (8, 8, 48), (12, 6, 48)]

  records = cache.CacheSource(str(tmp_path / "c"))
  table = buckets.bucket_table(data_cfg)
  for i in range(len(records)):
    record = records[i]
    example = source[record["index"]]
    h, w = table[buckets.nearest_bucket(*example["image"].shape[:2], table)]
    image = buckets.resize_center_crop(example["image"], h, w).astype(np.float32) / 127.5 - 1.0
    latents, text, _ = _encode_on_the_fly(image[None], [example["caption"]])
    np.testing.assert_array_equal(record["latents"], latents[0])
    np.testing.assert_array_equal(record["text"], text[0])

  iterator = pipeline.make_dataset(_cache_cfg(tmp_path / "c"), global_batch_size=3, seed=0)
  shapes_seen = {next(iterator)["latents"].shape for _ in range(3)}
  assert shapes_seen == {(3, 6, 12, 48), (3, 8, 8, 48), (3, 12, 6, 48)}


@pytest.fixture
def cache_copy(shapes_cache, tmp_path):
  path = tmp_path / "copy"
  shutil.copytree(shapes_cache, path)
  return path


def _edit_manifest(path, edit):
  manifest = json.loads((path / cache.MANIFEST).read_text())
  edit(manifest)
  (path / cache.MANIFEST).write_text(json.dumps(manifest))


def test_a_folder_without_manifest_is_refused(cache_copy):
  (cache_copy / cache.MANIFEST).unlink()
  with pytest.raises(FileNotFoundError, match="not a latent cache"):
    cache.CacheSource(str(cache_copy))


def test_a_manifest_that_is_not_json_is_refused(cache_copy):
  (cache_copy / cache.MANIFEST).write_text('{"format": "sana_jax.latent')
  with pytest.raises(ValueError, match="not valid JSON"):
    cache.CacheSource(str(cache_copy))


def test_a_manifest_of_another_format_is_refused(cache_copy):
  _edit_manifest(cache_copy, lambda m: m.update(format="something.else.v9"))
  with pytest.raises(ValueError, match="format 'something.else.v9'"):
    cache.CacheSource(str(cache_copy))


def test_a_manifest_whose_counts_disagree_with_its_shards_is_refused(cache_copy):
  def grow(manifest):
    manifest["count"] += 1
    manifest["buckets"][0]["count"] += 1
    manifest["buckets"][0]["shards"][-1]["count"] += 1
  _edit_manifest(cache_copy, grow)
  with pytest.raises(ValueError, match=f"shards hold {NUM_EXAMPLES} records but the manifest says {NUM_EXAMPLES + 1}"):
    cache.CacheSource(str(cache_copy))


def test_a_manifest_with_inconsistent_bucket_counts_is_refused(cache_copy):
  _edit_manifest(cache_copy, lambda m: m.update(count=m["count"] - 1))
  with pytest.raises(ValueError, match="inconsistent"):
    cache.CacheSource(str(cache_copy))


def test_a_missing_shard_file_is_named(cache_copy):
  (cache_copy / "b000-00002.array_record").unlink()
  with pytest.raises(FileNotFoundError, match="b000-00002.array_record"):
    cache.CacheSource(str(cache_copy))


def test_a_record_whose_shape_disagrees_with_the_manifest_is_refused(cache_copy):
  _edit_manifest(cache_copy, lambda m: m["buckets"][0].update(latent_shape=[4, 4, 48]))
  with pytest.raises(ValueError, match=r"record 0 has latents of shape \(8, 8, 48\)"):
    cache.CacheSource(str(cache_copy))[0]


def test_a_cache_that_does_not_fit_the_model_is_refused(shapes_cache):
  from sana_jax import configs
  model_cfg = configs.get_config("tiny").model
  model_cfg.update(in_channels=48, out_channels=48)  # the built-in space-to-depth latents of the cache
  cache.CacheSource(str(shapes_cache)).check_model(model_cfg)
  model_cfg.in_channels = 32
  with pytest.raises(ValueError, match="48-channel latents but model.in_channels is 32"):
    cache.CacheSource(str(shapes_cache)).check_model(model_cfg)


def test_a_cache_scaled_otherwise_than_the_run_decodes_is_refused(shapes_cache):
  source = cache.CacheSource(str(shapes_cache))
  autoencoder, _ = _codecs()
  source.check_autoencoder(autoencoder)
  with pytest.raises(ValueError, match=r"latents scaled by .* but the run's autoencoder decodes with "
                                       r"scaling_factor 2; set --config.codecs.scaling_factor="):
    source.check_autoencoder(SpaceToDepthAutoencoder(4, scaling_factor=2.0))


def test_cache_data_config_needs_a_path():
  with pytest.raises(ValueError, match="data.path"):
    pipeline.build_source(_cache_cfg(""))


def test_writing_over_an_existing_cache_is_refused(shapes_cache):
  autoencoder, text_encoder = _codecs()
  with pytest.raises(FileExistsError, match="already holds a cache"):
    cache.write_cache(str(shapes_cache), shapes.ShapesSource(2, 32), _shapes_cfg(2), autoencoder, text_encoder,
                      max_text_length=16, progress=False)


def test_gemma_cache_keeps_the_unmasked_caption_features_with_the_instruction(tmp_path):
  from sana_jax.sampling.text_encoding import CHI_DEFAULT, PromptEncoder
  from tests.models.gemma_builders import build_tiny_gemma, build_tiny_tokenizer

  pipe = tmp_path / "pipe"  # the layout of a diffusers Sana pipeline folder
  build_tiny_gemma(pipe / "text_encoder")
  build_tiny_tokenizer(pipe / "tokenizer", corpus=(*CHI_DEFAULT, " ".join(shapes.vocabulary())))
  out = tmp_path / "c"
  result = subprocess.run(
      [sys.executable, "-m", "sana_jax.preprocess", f"--out={out}", "--data.shapes_num_examples=4",
       f"--text_encoder={pipe}", "--max_text_length=12", "--batch_size=4"],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]

  records = cache.CacheSource(str(out))
  assert records.manifest["complex_human_instruction"] == "\n".join(CHI_DEFAULT)
  encoder = PromptEncoder.from_pretrained(str(pipe / "text_encoder"), str(pipe / "tokenizer"))
  captions = [records[i]["caption"] for i in range(4)]
  text, mask = (np.asarray(a) for a in encoder.encode(captions, CHI_DEFAULT, 12))  # [4, 12, 64], [4, 12]
  for i in range(4):
    kept = int(mask[i].sum())
    assert 1 < kept < 12  # BOS + the caption's tokens, then padding
    np.testing.assert_array_equal(records[i]["text_mask"], mask[i])
    np.testing.assert_allclose(records[i]["text"][:kept], text[i, :kept], atol=1e-6)
    np.testing.assert_array_equal(records[i]["text"][kept:], 0.0)
  null_text, null_mask = records.null_embedding()
  np.testing.assert_allclose(null_text, np.asarray(encoder.null_embedding(12)[0]), atol=1e-6)


def test_zeroed_padding_rows_leave_the_transformer_output_unchanged():
  """Why the cache may drop the padded rows of the text features: the model never reads them."""
  from sana_jax import configs
  import jax
  import jax.numpy as jnp
  from flax import nnx
  from sana_jax.models.transformer import SanaTransformer

  model_cfg = configs.get_config("tiny").model
  model_cfg.update(in_channels=48, out_channels=48)
  graphdef, abstract = nnx.split(nnx.eval_shape(lambda: SanaTransformer(model_cfg, rngs=nnx.Rngs(0))))
  rng = np.random.default_rng(0)
  weights = jax.tree.map(lambda x: (0.2 * rng.standard_normal(x.shape)).astype(x.dtype), abstract)
  forward = jax.jit(lambda weights, *inputs: nnx.merge(graphdef, weights)(*inputs))
  latents = jnp.asarray(rng.standard_normal((2, 8, 8, 48), dtype=np.float32))
  text = rng.standard_normal((2, 16, 32), dtype=np.float32) * 10.0
  mask = np.zeros((2, 16), np.int32)
  mask[0, :5], mask[1, :11] = 1, 1
  timesteps = jnp.asarray([250.0, 900.0])
  full = forward(weights, latents, timesteps, jnp.asarray(text), jnp.asarray(mask))
  zeroed = forward(weights, latents, timesteps, jnp.asarray(text * mask[..., None]), jnp.asarray(mask))
  np.testing.assert_array_equal(np.asarray(zeroed), np.asarray(full))


def test_training_reads_latents_from_the_cache_without_encoding_images(shapes_cache, tmp_path, monkeypatch):
  from sana_jax.training import loop
  from tests.training.test_loop import micro_config
  cfg = micro_config()
  cfg.data.update(name="cache", path=str(shapes_cache), image_size=32)
  cfg.model.update(caption_channels=32)
  cfg.codecs.update(max_text_length=16)
  cfg.train.update(batch_size=8, num_steps=2, checkpoint_every=2, sample_every=0)
  cfg.sampling.update(num_eval_images=0)

  def no_encoding(*args, **kwargs):
    raise AssertionError("the image encoder ran while training from the cache")

  monkeypatch.setattr(SpaceToDepthAutoencoder, "encode", no_encoding)
  summary = loop.train_and_evaluate(cfg, str(tmp_path / "run"))
  assert summary["step"] == 2
  assert sorted(os.listdir(tmp_path / "run" / "checkpoints")) == ["2"]
