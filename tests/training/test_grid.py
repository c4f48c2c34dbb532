"""Labelled sample grids: each image enlarged in its cell with its prompt (and note) drawn below."""
import numpy as np
import pytest

from sana_jax.sampling.grid import labelled_grid, save_grid


def test_each_cell_holds_its_image_and_text_below_it():
  images = np.stack([np.full((32, 32, 3), v, np.uint8) for v in (0, 60, 120, 180, 240)])
  grid = np.asarray(labelled_grid(images, ["a red circle to the left of a blue square"] * 5,
                                  notes=["✓ position"] * 5, columns=4))
  pad, cell = 4, 128  # 32 px enlarged 4x to the minimum cell width
  assert grid.shape[1] == 4 * (cell + pad) + pad
  for i, v in enumerate((0, 60, 120, 180)):
    x = pad + i * (cell + pad)
    np.testing.assert_array_equal(grid[pad:pad + cell, x:x + cell], v)
    text = grid[pad + cell:pad + cell + 40, x:x + cell]
    assert (text < 128).any() and (text == 255).mean() > 0.5  # dark glyphs on white
  second_row = grid[grid.shape[0] // 2 + 20:, pad:pad + cell]
  assert (second_row == 240).all(axis=-1).any()


def test_float_images_and_mismatched_prompts(tmp_path):
  path = save_grid(np.zeros((2, 8, 8, 3), np.float32), ["one", "two"], tmp_path / "g" / "grid.png")
  assert path.endswith("grid.png")
  with pytest.raises(ValueError, match="2 images but 1 prompts"):
    labelled_grid(np.zeros((2, 8, 8, 3), np.float32), ["one"])
