"""Pre-training before fine-tuning (the paper's Figure 1, steps 1 and 3): SupSAM (prompt-based
learning on several labelled datasets) and SSLSAM (masked image modelling on their images),
each written as a SAM-format checkpoint."""
from tunesam.pretrain.config import PretrainConfig
from tunesam.pretrain.runner import pretrain

__all__ = ["PretrainConfig", "pretrain"]
