"""The SAM family: encoders, prompt encoder, mask decoder, segmenter, registry, checkpoints."""
