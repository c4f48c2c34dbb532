"""Best-of-N: candidate generation in fixed-size batches with distinct seeds, and the judges."""
import json

import numpy as np
import pytest

from sana_jax.scaling.best_of_n import (best_of_n, generate_candidates, make_judge, pipeline_generate_fn,
                                        save_best_of_n, selection_curve)
from sana_jax.scaling.judges import (CLIPScoreJudge, ShapesEvaluatorJudge, Verdict, YesNoVLMJudge, first_wins,
                                     knockout)
from tests.scaling.builders import save_tiny_clip, save_tiny_llava, tiny_pipeline


class RecordingGenerator:
  """generate(prompts, seeds): an 8x8 image whose red channel is seed % 251; records each batch."""

  def __init__(self):
    self.calls = []

  def __call__(self, prompts, seeds):
    self.calls.append((list(prompts), list(seeds)))
    images = np.zeros((len(seeds), 8, 8, 3), np.uint8)
    images[..., 0] = (np.asarray(seeds) % 251)[:, None, None]
    return images


def red(images, prompt):
  return [float(im[0, 0, 0]) for im in images]


def test_candidates_come_in_full_batches_with_distinct_seeds():
  gen = RecordingGenerator()
  images, seeds = generate_candidates(gen, ["a", "b"], 5, batch_size=4, seed=10)
  assert [len(s) for _, s in gen.calls] == [4, 4, 4]  # 10 candidates, the last batch padded
  assert seeds.tolist() == [[10, 11, 12, 13, 14], [15, 16, 17, 18, 19]]
  assert images.shape == (2, 5, 8, 8, 3)
  np.testing.assert_array_equal(images[..., 0, 0, 0], seeds % 251)
  assert gen.calls[0][0] == ["a", "a", "a", "a"] and gen.calls[1][0] == ["a", "b", "b", "b"]


def test_best_of_n_with_a_score_callable_keeps_the_top_scores():
  results = best_of_n(RecordingGenerator(), ["p"], 6, red, keep=2, batch_size=4, seed=3)
  r = results[0]
  assert r.seeds == [3, 4, 5, 6, 7, 8]
  assert r.winners == [5, 4] and r.ranking == [5, 4, 3, 2, 1, 0]
  np.testing.assert_array_equal(r.images[:, 0, 0, 0], [8, 7])


def test_selection_curve_counts_the_judges_picks_the_oracle_and_pairs():
  correct = np.array([[0, 1, 0, 0], [0, 0, 0, 1], [1, 1, 1, 1]], bool)
  scores = np.array([[0.9, 0.5, 0.1, 0.0],    # the judge prefers the wrong first candidate
                     [0.1, 0.2, 0.3, 0.8],    # and finds the right fourth
                     [0.0, 0.0, 0.0, 0.0]])
  curve = selection_curve(scores, correct)
  assert curve["N=1"] == {"judge": 1 / 3, "oracle": 1 / 3}
  assert curve["N=2"] == {"judge": 1 / 3, "oracle": 2 / 3}  # prompt 0: 0.9 beats the right 0.5
  assert curve["N=4"] == {"judge": 2 / 3, "oracle": 1.0}
  assert "N=8" not in curve and list(selection_curve(scores, correct, max_n=2)) == ["N=1", "N=2", "pair_auc"]
  # prompt 0: the right one beats 2 of 3 wrong ones; prompt 1: 3 of 3; prompt 2 has no wrong one
  assert curve["pair_auc"] == pytest.approx((2 / 3 + 1) / 2)
  with pytest.raises(ValueError, match="max_n must be in 1..4"):
    selection_curve(scores, correct, max_n=5)
  with pytest.raises(ValueError, match="equal non-empty"):
    selection_curve(scores[:, :2], correct)


def test_save_best_of_n_writes_winners_and_the_full_ranking(tmp_path):
  results = best_of_n(RecordingGenerator(), ["p", "q"], 4, red, keep=1, batch_size=4)
  path = save_best_of_n(results, tmp_path, settings={"judge": "red"})
  report = json.loads(open(path).read())
  assert report["settings"] == {"judge": "red"}
  assert report["prompts"][1]["ranking_seeds"] == [7, 6, 5, 4]
  assert report["prompts"][1]["files"] == ["00001_0_seed7.png"]
  assert (tmp_path / "00001_0_seed7.png").exists()


def test_knockout_pairwise_rule_follows_the_nvila_verifier():
  yes_hi, yes_lo = Verdict("yes", 3.0, 1.0), Verdict("yes", 2.0, 0.0)
  no_hi, no_lo = Verdict("no", 0.0, 5.0), Verdict("no", 0.0, 4.0)
  assert first_wins(yes_lo, no_lo) and not first_wins(no_lo, yes_lo)  # yes beats no, either side
  assert first_wins(yes_hi, yes_lo) and not first_wins(yes_lo, yes_hi)  # both yes: higher yes-logit
  assert first_wins(no_lo, no_hi) and not first_wins(no_hi, no_lo)  # both no: lower no-logit
  assert not first_wins(yes_hi, yes_hi)  # exact tie: the second image


def _nvlabs_loop(verdicts, pick):
  """NVlabs' loop, restated: pair neighbours each round until `pick` (a power of two) remain."""
  files = list(range(len(verdicts)))
  while len(files) > pick:
    files = [a if first_wins(verdicts[a], verdicts[b]) else b for a, b in zip(files[::2], files[1::2])]
  return files


@pytest.mark.parametrize("keep", [1, 2, 4])
def test_knockout_equals_the_nvlabs_bracket_for_powers_of_two(keep):
  rng = np.random.default_rng(keep)
  verdicts = [Verdict(rng.choice(["yes", "no"]), *rng.standard_normal(2)) for _ in range(16)]
  winners, lost_in = knockout(verdicts, keep)
  assert winners == _nvlabs_loop(verdicts, keep)
  assert [i for i, r in enumerate(lost_in) if r is None] == sorted(winners)


def test_knockout_gives_byes_when_the_field_is_not_a_power_of_two():
  verdicts = [Verdict("no", 0.0, float(v)) for v in [5, 4, 3, 2, 1]]  # lower no-logit wins: 4 is best
  winners, lost_in = knockout(verdicts, keep=2)
  assert len(winners) == 2 and 4 in winners
  assert lost_in[4] is None


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory):
  return save_tiny_llava(tmp_path_factory.mktemp("llava"))


def test_vlm_judge_verdicts_equal_greedy_generation_on_each_image_alone(llava_dir):
  import torch
  judge = YesNoVLMJudge(llava_dir, batch_size=2)
  images = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
  verdicts = judge.verdicts(images, "a red circle")
  question = judge.question("a red circle")
  assert "The given prompt is:a red circle. Please consider" in question
  for image, verdict in zip(images, verdicts):
    inputs = judge.processor(images=[image], text=[question], return_tensors="pt")
    with torch.no_grad():
      out = judge.model.generate(**inputs, max_new_tokens=1, do_sample=False, output_logits=True,
                                 return_dict_in_generate=True)
    logits = out.logits[0][0]
    assert verdict.answer == judge.tokenizer.decode([int(out.sequences[0, -1])]).strip()
    assert verdict.yes_logit == pytest.approx(float(logits[judge.yes_id]), abs=1e-4)
    assert verdict.no_logit == pytest.approx(float(logits[judge.no_id]), abs=1e-4)


def test_best_of_n_with_the_vlm_judge_keeps_the_knockout_winner(llava_dir):
  judge = make_judge(f"vlm:{llava_dir}")
  r = best_of_n(RecordingGenerator(), ["a red circle"], 4, judge, keep=1, batch_size=4)[0]
  verdicts = [Verdict(**v) for v in r.details["verdicts"]]
  assert r.winners == _nvlabs_loop(verdicts, 1)
  assert sorted(r.ranking) == [0, 1, 2, 3] and r.ranking[0] == r.winners[0]


def test_clip_score_is_100_times_the_clamped_cosine_of_clip_embeddings(tmp_path):
  import torch
  path = save_tiny_clip(tmp_path / "clip", seed=4)  # a seed whose cosines have both signs
  judge = CLIPScoreJudge(str(path), batch_size=2)
  images = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
  ours = judge.scores(images, "a red circle")
  inputs = judge.processor(text=["a red circle"], images=list(images), return_tensors="pt", padding=True)
  with torch.no_grad():
    out = judge.model(**inputs)
    cos = (out.logits_per_image[:, 0] / judge.model.logit_scale.exp()).numpy()
  assert (cos > 0).any() and (cos < 0).any()
  np.testing.assert_allclose(ours, 100 * np.maximum(cos, 0), atol=1e-4)


def test_shapes_evaluator_judge_scores_a_faithful_render_above_a_blank_image():
  from sana_jax.data import shapes
  spec = shapes.sample_spec(np.random.default_rng(0), shapes.TASKS[0])
  image = shapes.render(spec, np.random.default_rng(1), image_size=32)
  blank = np.full_like(image, 128)
  scores = ShapesEvaluatorJudge().scores(np.stack([blank, image]), spec.caption)
  assert scores.tolist() == [0.0, 1.0]


def test_make_judge_names_the_accepted_specs(tmp_path):
  with pytest.raises(ValueError, match="'vlm:FOLDER', 'clip:FOLDER', 'contrastive:FOLDER' or 'shapes'"):
    make_judge("gpt")
  with pytest.raises(FileNotFoundError, match="is not a folder"):
    make_judge(f"clip:{tmp_path / 'missing'}")


@pytest.mark.slow  # compiles the whole pipeline twice (50 s measured on the busy shared CPU)
def test_best_of_n_over_a_pipeline_gives_candidate_j_the_noise_of_its_own_seed():
  pipe = tiny_pipeline()
  settings = dict(num_inference_steps=2, guidance_scale=1.0, height=8, width=8, use_resolution_binning=False,
                  complex_human_instruction=None, max_sequence_length=8)
  generate = pipeline_generate_fn(pipe, **settings)
  r = best_of_n(generate, ["a red circle"], 3, red, keep=1, batch_size=2, seed=5, keep_candidates=True)[0]
  alone = pipe("a red circle", seed=r.seeds[2], output_type="np", return_dict=False, **settings)
  np.testing.assert_array_equal(r.candidates[2], (alone[0] * 255).round().astype(np.uint8))
  assert len({c.tobytes() for c in r.candidates}) == 3
