"""TFDS by name through tfds.data_source, on a tiny ArrayRecord dataset prepared in the test."""
import io

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from sana_jax.data import pipeline
from sana_jax.data.tfds_source import TfdsSource


class TinyCaptions(tfds.core.GeneratorBasedBuilder):
  """Eight PNG-encoded images of varying height with text captions."""
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(None, None, 3)), "caption": tfds.features.Text()}))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    for i in range(8):
      buf = io.BytesIO()
      Image.fromarray(np.full((12 + i, 16, 3), 20 * i, np.uint8)).save(buf, "PNG")
      yield i, {"image": buf.getvalue(), "caption": f"picture number {i}"}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  path = tmp_path_factory.mktemp("tfds")
  TinyCaptions(data_dir=str(path), file_format="array_record").download_and_prepare()
  return str(path)


def test_records_read_back_as_rgb_images_and_text(data_dir):
  source = TfdsSource("tiny_captions", "train", data_dir)
  assert len(source) == 8
  examples = [source[i] for i in range(8)]
  by_caption = {e["caption"]: e["image"] for e in examples}
  image = by_caption["picture number 3"]
  assert image.shape == (15, 16, 3) and image.dtype == np.uint8 and (image == 60).all()


def test_pipeline_reads_tfds_by_name(data_dir):
  cfg = pipeline.default_data_config()
  cfg.update(name="tfds", tfds_name="tiny_captions", tfds_data_dir=data_dir, image_size=8, num_epochs=1)
  batches = list(pipeline.make_dataset(cfg, global_batch_size=4, seed=0))
  assert [b["images"].shape for b in batches] == [(4, 8, 8, 3)] * 2
  assert sorted(c for b in batches for c in b["captions"]) == sorted(f"picture number {i}" for i in range(8))


def test_missing_feature_names_the_available_ones(data_dir):
  with pytest.raises(ValueError, match=r"features \['caption', 'image'\]; missing \['text'\]"):
    TfdsSource("tiny_captions", "train", data_dir, caption_key="text")
