"""Evaluation of optimizers against tuned baselines (`lopt evaluate`)."""
