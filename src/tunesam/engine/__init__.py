"""Training machinery: the one loop (fit), the run folder, the fine-tuning task, losses, schedule, DDP, the embedding cache."""
