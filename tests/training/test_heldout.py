"""The held-out shapes prompts: balanced over the tasks named, whatever weights training gives them."""
from collections import Counter

from sana_jax import configs
from sana_jax.data import shapes
from sana_jax.training import loop


def test_a_task_named_twice_is_trained_twice_as_often_but_held_out_prompts_stay_the_same():
  cfg = configs.get_config("tiny24")
  standard_prompts, standard_specs = loop.heldout_shapes(cfg, 48)
  cfg.data.shapes_tasks = shapes.TASKS + ("position",)
  prompts, specs = loop.heldout_shapes(cfg, 48)
  assert prompts == standard_prompts
  assert Counter(s.task for s in specs) == {task: 8 for task in shapes.TASKS}

  source = shapes.ShapesSource(700, 24, 0, tuple(cfg.data.shapes_tasks))
  counts = Counter(source.spec(i).task for i in range(700))
  assert counts["position"] == 200 and all(counts[t] == 100 for t in shapes.TASKS if t != "position")


def test_the_autoencoder_fit_scores_the_same_held_out_scenes_as_the_loop(monkeypatch):
  from sana_jax.data import shapes_eval
  from sana_jax.training import autoencoder_fit

  cfg = configs.get_config("tiny")
  cfg.data.shapes_tasks = shapes.TASKS + ("two_object", "position")
  seen = {}

  def score(images, specs):
    seen["specs"] = specs
    return {"overall": 1.0}

  monkeypatch.setattr(shapes_eval, "score", score)

  class Identity:
    encode = decode = staticmethod(lambda images: images)

  autoencoder_fit.reconstruction_score(Identity(), cfg, count=48)
  assert seen["specs"] == loop.heldout_shapes(cfg, 48)[1]
