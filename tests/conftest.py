"""Shared test set-up: CPU, float32, and a temp data dir so tests never touch the user's cache."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
