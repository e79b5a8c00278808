"""The evaluation of runs and checkpoints (DSC and NSD themselves are :mod:`tunesam.metrics`)."""
