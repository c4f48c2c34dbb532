"""Training: objective, train state, sharded step, checkpoints, loop, capacity planning."""
