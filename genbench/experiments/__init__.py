"""Experiments: plan runs and sweeps from user input, execute them."""
