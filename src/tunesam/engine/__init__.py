"""Training machinery: losses, optimiser and schedule, the trainer, checkpoints."""
