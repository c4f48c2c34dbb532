"""SANA 1.5's scaling recipe: depth growth, block-importance pruning, best-of-N inference scaling."""
from sana_jax.scaling.best_of_n import (BestOfNResult, best_of_n, make_judge, pipeline_generate_fn,
                                        run_best_of_n_cli, save_best_of_n)
from sana_jax.scaling.growth import STRATEGIES, grow, layer_map
from sana_jax.scaling.importance import BlockImportance, block_importance, load_importance
from sana_jax.scaling.judges import (CLIPScoreJudge, PointwiseJudge, ShapesEvaluatorJudge, YesNoVLMJudge,
                                     knockout)
from sana_jax.scaling.pruning import most_important_blocks, prune

__all__ = ["BestOfNResult", "BlockImportance", "CLIPScoreJudge", "PointwiseJudge", "STRATEGIES",
           "ShapesEvaluatorJudge", "YesNoVLMJudge", "best_of_n", "block_importance", "grow", "knockout",
           "layer_map", "load_importance", "make_judge", "most_important_blocks", "pipeline_generate_fn",
           "prune", "run_best_of_n_cli", "save_best_of_n"]
