"""Metrics (DSC, NSD) and the evaluation of runs and checkpoints."""
