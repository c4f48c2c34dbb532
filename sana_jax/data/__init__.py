"""Training data: synthetic shapes (built-in default + exact evaluator), image folders, TFDS, buckets.

Entry point: `pipeline.make_dataset(cfg.data, global_batch_size, seed, shard_index, shard_count)`.
"""
