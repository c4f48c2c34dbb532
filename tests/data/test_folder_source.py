"""Image-caption folders (NVlabs example-data layout): captions, skipped files, buckets."""
import io
import json
import logging

import numpy as np
import pytest
from PIL import Image

from sana_jax.data import pipeline
from sana_jax.data.folder import FolderSource


def _png(path, height, width, value):
  Image.fromarray(np.full((height, width, 3), value, np.uint8)).save(path)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  root = tmp_path_factory.mktemp("images")
  (root / "sub").mkdir()
  for i in range(6):  # wide images with .txt captions
    _png(root / f"wide{i}.png", 16, 32, 10 * i)
    (root / f"wide{i}.txt").write_text(f"\nwide picture {i}\nsecond line\n")
  for i in range(4):  # tall JPEGs with .json captions, one nested under its stem as NVlabs' jsons are
    Image.fromarray(np.full((40, 20, 3), 200, np.uint8)).save(root / "sub" / f"tall{i}.jpg")
    info = {"prompt": f"tall picture {i}"} if i else {f"tall{i}": {"prompt": "tall picture 0", "other": "x"}}
    (root / "sub" / f"tall{i}.json").write_text(json.dumps(info))
  (root / "garbage.png").write_bytes(b"not an image at all")
  (root / "garbage.txt").write_text("never read")
  _png(root / "uncaptioned.png", 16, 16, 0)
  buf = io.BytesIO()
  Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(buf, "PNG")
  (root / "truncated.png").write_bytes(buf.getvalue()[:200])  # header fine, pixel data cut off
  (root / "truncated.txt").write_text("a truncated picture")
  return root


def test_captions_come_from_txt_first_line_and_json_prompt(folder):
  source = FolderSource(str(folder))
  captions = dict(zip([p.rsplit("/", 1)[1] for p in source.paths], source.captions))
  assert captions["wide3.png"] == "wide picture 3"
  assert captions["tall0.jpg"] == "tall picture 0" and captions["tall2.jpg"] == "tall picture 2"


def test_unreadable_and_uncaptioned_images_are_skipped_and_counted(folder, caplog):
  with caplog.at_level(logging.WARNING):
    source = FolderSource(str(folder))
  assert len(source) == 11  # 6 wide + 4 tall + the truncated one (its header reads)
  assert dict(source.skipped) == {"unreadable": 1, "no_caption": 1}
  assert "garbage.png" in caplog.text and "uncaptioned.png" in caplog.text


def test_examples_are_rgb_uint8_with_header_sizes(folder):
  source = FolderSource(str(folder))
  example = source[source.paths.index(str(folder / "sub" / "tall1.jpg"))]
  assert example["image"].shape == (40, 20, 3) and example["image"].dtype == np.uint8
  assert tuple(source.image_sizes()[source.paths.index(str(folder / "wide0.png"))]) == (16, 32)


def test_truncated_image_is_replaced_in_its_batch_and_logged(folder, caplog):
  cfg = pipeline.default_data_config()
  cfg.update(name="folder", path=str(folder), image_size=16, num_epochs=1)
  with caplog.at_level(logging.WARNING):
    batches = list(pipeline.make_dataset(cfg, global_batch_size=11, seed=0))
  assert len(batches) == 1 and batches[0]["images"].shape == (11, 16, 16, 3)
  assert "a truncated picture" not in batches[0]["captions"]
  assert "skipping unreadable example" in caplog.text and "truncated" in caplog.text


def test_multi_scale_batches_take_the_size_of_their_bucket(folder):
  cfg = pipeline.default_data_config()
  cfg.update(name="folder", path=str(folder), image_size=32, size_multiple=8, multi_scale=True, num_epochs=1)
  batches = list(pipeline.make_dataset(cfg, global_batch_size=2, seed=0))
  shapes = {b["images"].shape[1:3] for b in batches}
  assert shapes == {(24, 48), (48, 24)}  # the wide (0.5) and tall (2.0) buckets at base 32
  for b in batches:
    assert len({c.split()[0] for c in b["captions"]}) == 1  # never wide and tall in one batch


def test_missing_folder_is_named_in_the_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="nowhere"):
    FolderSource(str(tmp_path / "nowhere"))
