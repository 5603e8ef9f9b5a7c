"""`python -m maskprop_jax.demo`: see cli.py."""

from maskprop_jax.demo.cli import main

main()
