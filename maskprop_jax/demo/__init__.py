"""The demo: a trained run or converted weights on a user's video or image (`python -m maskprop_jax.demo`)."""
