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
