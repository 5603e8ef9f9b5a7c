"""Training MaskProp: the loop (loop.py), the model, train state and step (state.py), the optimizer, the mesh and
multi-host setup (parallel.py), checkpoints, and a run on disk with the one way to load it (runs.py).

Nothing here imports maskprop_jax.inference: train.py hands the loop its evaluator."""
