"""Parameter-efficient fine-tuning: Adapter and LoRA, and the 18 strategies."""
