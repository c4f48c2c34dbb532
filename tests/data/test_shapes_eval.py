"""The shapes evaluator: reads images back into objects and scores them GenEval-style."""
import numpy as np
import pytest
from scipy import ndimage

from sana_jax.data import shapes, shapes_eval


@pytest.fixture(scope="module")
def examples():
  source = shapes.ShapesSource(num_examples=600, image_size=32, seed=7)
  return [source[i] for i in range(len(source))]


def test_renderer_images_score_exactly_one_at_32px(examples):
  report = shapes_eval.score([e["image"] for e in examples], [e["spec"] for e in examples])
  assert report == {**{t: 1.0 for t in shapes.TASKS}, "overall": 1.0}


def test_renderer_images_score_exactly_one_at_64px():
  source = shapes.ShapesSource(num_examples=120, image_size=64, seed=3)
  report = shapes_eval.score([source[i]["image"] for i in range(120)], [source[i]["spec"] for i in range(120)])
  assert report["overall"] == 1.0


def test_noise_and_blur_do_not_change_the_score(examples):
  rng = np.random.default_rng(0)
  images = []
  for e in examples:
    blurred = ndimage.gaussian_filter(e["image"].astype(np.float32), (0.5, 0.5, 0)) / 127.5 - 1.0
    images.append(np.clip(blurred + rng.normal(0.0, 0.1, blurred.shape), -1.0, 1.0).astype(np.float32))
  report = shapes_eval.score(images, [e["spec"] for e in examples])
  assert report["overall"] == 1.0


def test_detected_objects_match_the_rendered_ones():
  spec = shapes.parse_caption("two red circles left of a blue square")
  image = shapes.render(spec, np.random.default_rng(0), 32)
  found = shapes_eval.detect_objects(image)
  assert sorted((o.color, o.shape) for o in found) == [("blue", "square"), ("red", "circle"), ("red", "circle")]


def _image(caption, seed=0):
  return shapes.render(shapes.parse_caption(caption), np.random.default_rng(seed), 32)


@pytest.mark.parametrize("drawn, asked", [
    ("a blue circle", "a red circle"),                                   # colour
    ("a square", "a circle"),                                            # shape
    ("two triangles", "three triangles"),                                # count
    ("three triangles", "two triangles"),                                # count
    ("a circle right of a square", "a circle left of a square"),         # position
    ("a square above a triangle", "a square below a triangle"),          # position
    ("a red circle and a blue square", "a blue circle and a red square"),  # colour attribution
])
def test_image_of_another_caption_fails(drawn, asked):
  for seed in range(5):
    assert shapes_eval.evaluate_image(_image(drawn, seed), asked) is False
    assert shapes_eval.evaluate_image(_image(drawn, seed), drawn) is True


def test_blank_image_fails_every_task(examples):
  blank = np.full((32, 32, 3), shapes.BACKGROUND, np.uint8)
  report = shapes_eval.score([blank] * len(examples), [e["spec"] for e in examples])
  assert report["overall"] == 0.0


def test_float_images_in_minus_one_to_one_read_like_uint8(examples):
  image = examples[4]["image"]
  assert shapes_eval.detect_objects(image.astype(np.float32) / 127.5 - 1.0) == shapes_eval.detect_objects(image)


def test_overall_is_the_mean_of_task_accuracies():
  specs = ["a circle", "a square", "a red circle"]
  images = [_image("a circle"), _image("a circle"), _image("a red circle")]
  report = shapes_eval.score(images, specs)
  assert report == {"single_object": 0.5, "colors": 1.0, "overall": 0.75}


def test_non_rgb_input_is_refused():
  with pytest.raises(ValueError, match=r"RGB image \[H, W, 3\]"):
    shapes_eval.detect_objects(np.zeros((32, 32), np.uint8))


def test_verdicts_per_image_give_the_score_and_a_table(examples):
  images = [e["image"] for e in examples]
  specs = [shapes.SceneSpec.from_json(e["spec"]) for e in examples]
  blank = np.full_like(images[0], 128)
  per_image = shapes_eval.verdicts([images[0], blank], specs[:2])
  assert per_image == [(specs[0].task, True), (specs[1].task, False)]
  assert shapes_eval.score_verdicts(per_image) == shapes_eval.score([images[0], blank], specs[:2])
  table = shapes_eval.score_table({"single_object": 1.0, "overall": 0.5}, {"single_object": 3})
  assert table.splitlines() == ["task           score  images", "single_object  1.000       3",
                                "overall        0.500"]


def test_failure_breakdown_says_whether_the_count_the_shapes_or_the_colours_went_wrong():
  blank = np.full((32, 32, 3), shapes.BACKGROUND, np.uint8)
  drawn_and_asked = [("a circle and a square", "a circle and a square"),  # right
                     ("two circles", "a circle and a square"),  # right count, wrong shapes
                     ("a circle and a square", "a circle"),  # one object too many
                     ("a red circle", "a blue circle"),  # right count and shape, wrong colour
                     ("a blue circle", "a blue circle")]  # right
  images = [_image(drawn) for drawn, _ in drawn_and_asked] + [blank]
  specs = [asked for _, asked in drawn_and_asked] + ["a red square"]  # nothing drawn: too few
  out = shapes_eval.failure_breakdown(images, specs)
  assert out["two_object"] == {"images": 2, "too_few": 0.0, "right_count": 1.0, "too_many": 0.0,
                               "right_shapes": 0.5, "correct": 0.5}  # colour-free captions: no right_colours
  assert out["single_object"] == {"images": 1, "too_few": 0.0, "right_count": 0.0, "too_many": 1.0,
                                  "right_shapes": 0.0, "correct": 1.0}  # GenEval: other shapes may be there
  assert out["colors"] == {"images": 3, "too_few": 0.333, "right_count": 0.667, "too_many": 0.0,
                           "right_shapes": 0.667, "right_colours": 0.333, "correct": 0.333}
  assert list(out) == ["single_object", "two_object", "colors"]  # in TASKS order
