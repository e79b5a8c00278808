"""The paper's 18 fine-tuning strategies: what is added, what trains, what stays frozen.

A strategy is ``tune`` (``decoder`` or ``encoder-decoder``) x ``method`` (``vanilla``,
``adapter``, ``lora``), applied to any backbone. Freezing is structural: every parameter
is frozen first, then exactly the intended ones are released, then the parts that get no
gradient in the chosen ``mode`` are frozen again so an optimiser (or DDP) never holds a
parameter that cannot learn.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from torch import nn

from tunesam.models.image_encoder import ImageEncoderViT
from tunesam.models.segmenter import SamSegmenter
from tunesam.models.tiny_vit import TinyViT
from tunesam.models.transformer import Attention as DecoderAttention
from tunesam.peft.adapter import ParallelAdapter, SerialAdapter
from tunesam.peft.lora import LoRALinear

TUNES = ("decoder", "encoder-decoder")
METHODS = ("vanilla", "adapter", "lora")
MODES = ("auto", "point", "box")
ADAPTER_BLOCKS = ("default", "all")


@dataclass(frozen=True)
class Strategy:
    """One fine-tuning strategy, validated at construction."""

    tune: str = "encoder-decoder"
    method: str = "vanilla"
    mode: str = "auto"
    adapter_blocks: str = "default"
    adapter_ratio: float = 0.25
    lora_rank: int = 4
    lora_alpha: float | None = None

    def __post_init__(self) -> None:
        for value, allowed, what in (
            (self.tune, TUNES, "tune"),
            (self.method, METHODS, "method"),
            (self.mode, MODES, "mode"),
            (self.adapter_blocks, ADAPTER_BLOCKS, "adapter_blocks"),
        ):
            if value not in allowed:
                raise ValueError(f"{what} must be one of {', '.join(allowed)}; got {value!r}")
        if self.lora_rank < 1:
            raise ValueError(f"lora_rank must be >= 1, got {self.lora_rank}")
        if not 0 < self.adapter_ratio <= 4:
            raise ValueError(f"adapter_ratio must be in (0, 4], got {self.adapter_ratio}")

    @property
    def name(self) -> str:
        return f"{self.tune}/{self.method}"

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _encoder_blocks(encoder: nn.Module) -> list[nn.Module]:
    """Transformer blocks of the image encoder, in order (TinyViT: its attention blocks)."""
    if isinstance(encoder, ImageEncoderViT):
        return list(encoder.blocks)
    if isinstance(encoder, TinyViT):
        return list(encoder.attention_blocks())
    raise TypeError(f"no adapter placement known for {type(encoder).__name__}")


def adapter_block_indexes(n_blocks: int, which: str) -> list[int]:
    """``default``: the first two and last two blocks (the paper); ``all``: every block."""
    if which == "all":
        return list(range(n_blocks))
    return sorted({i for i in (0, 1, n_blocks - 2, n_blocks - 1) if 0 <= i < n_blocks})


def _width(block: nn.Module) -> int:
    return next(m for m in block.mlp.modules() if isinstance(m, nn.Linear)).in_features


def _inject_encoder(encoder: nn.Module, s: Strategy) -> list[nn.Module]:
    added: list[nn.Module] = []
    blocks = _encoder_blocks(encoder)
    if s.method == "adapter":
        for i in adapter_block_indexes(len(blocks), s.adapter_blocks):
            blk, dim = blocks[i], _width(blocks[i])
            blk.attn = SerialAdapter(blk.attn, dim, s.adapter_ratio)
            blk.mlp = ParallelAdapter(blk.mlp, dim, s.adapter_ratio)
            added += [blk.attn.adapter, blk.mlp.adapter]
    elif s.method == "lora":
        for blk in blocks:
            q_rows, v_rows = blk.attn.qkv_layout()
            blk.attn.qkv = LoRALinear(blk.attn.qkv, {"q": q_rows, "v": v_rows}, s.lora_rank, s.lora_alpha)
            added.append(blk.attn.qkv)
    return added


def _inject_decoder(model: SamSegmenter, s: Strategy) -> list[nn.Module]:
    """Adapters after the two cross-attentions of each two-way block (tokens to image, image
    to tokens), as Medical SAM Adapter and the paper's code place them: two per block, the
    paper's 0.13M for four. LoRA on q and v of every decoder attention."""
    added: list[nn.Module] = []
    transformer = model.mask_decoder.transformer
    if s.method == "adapter":
        dim = transformer.embedding_dim
        for layer in transformer.layers:
            layer.cross_attn_token_to_image = SerialAdapter(layer.cross_attn_token_to_image, dim, s.adapter_ratio)
            layer.cross_attn_image_to_token = SerialAdapter(layer.cross_attn_image_to_token, dim, s.adapter_ratio)
            added += [layer.cross_attn_token_to_image.adapter, layer.cross_attn_image_to_token.adapter]
    elif s.method == "lora":
        for attn in [m for m in transformer.modules() if isinstance(m, DecoderAttention)]:
            attn.q_proj = LoRALinear(attn.q_proj, {"all": None}, s.lora_rank, s.lora_alpha)
            attn.v_proj = LoRALinear(attn.v_proj, {"all": None}, s.lora_rank, s.lora_alpha)
            added += [attn.q_proj, attn.v_proj]
    return added


def _set_trainable(module: nn.Module, flag: bool) -> None:
    for p in module.parameters():
        p.requires_grad_(flag)


def _peft_params(modules: list[nn.Module]) -> list[nn.Parameter]:
    params: list[nn.Parameter] = []
    for m in modules:
        if isinstance(m, LoRALinear):
            params += list(m.lora_A.values()) + list(m.lora_B.values())
        else:
            params += list(m.parameters())
    return params


def used_heads(model: SamSegmenter, mode: str) -> list[int]:
    """Decoder output tokens whose hypernetwork heads produce the trained output."""
    return list(model.class_heads) if mode == "auto" else [0]


def apply_strategy(model: SamSegmenter, strategy: Strategy) -> SamSegmenter:
    """Inject adapters/LoRA and set ``requires_grad`` for ``strategy``, in place.

    Call it after loading base weights. Records ``model.strategy`` and
    ``model.frozen_parts`` (module name -> why it is frozen) for reporting.
    """
    if model.strategy is not None:
        raise RuntimeError(f"a strategy ({model.strategy.name}) was already applied to this model")
    if strategy.mode != "auto" and model.num_classes != 1:
        raise ValueError(f"{strategy.mode} prompts segment one object: build the model with num_classes=1")
    s = strategy
    _set_trainable(model, False)
    added: list[nn.Module] = []
    if s.tune == "encoder-decoder":
        added += _inject_encoder(model.image_encoder, s)
    added += _inject_decoder(model, s)

    decoder = model.mask_decoder
    if s.method == "vanilla":
        _set_trainable(decoder, True)
        if s.tune == "encoder-decoder":
            _set_trainable(model.image_encoder, True)
    for p in _peft_params(added):
        p.requires_grad_(True)
    # The class-specific output parts train in every strategy.
    heads = used_heads(model, s.mode)
    decoder.mask_tokens.weight.requires_grad_(True)
    for i in heads:
        _set_trainable(decoder.output_hypernetworks_mlps[i], True)

    frozen: dict[str, str] = {"prompt_encoder": "kept as pretrained (the paper, section 2.2.2)"}
    if s.tune == "decoder":
        frozen["image_encoder"] = "decoder-only strategy: frozen and run without autograd"
    _set_trainable(decoder.iou_prediction_head, False)
    frozen["mask_decoder.iou_prediction_head"] = f"no gradient in {s.mode} mode (no IoU loss)"
    for i in range(decoder.num_mask_tokens):
        if i not in heads:
            _set_trainable(decoder.output_hypernetworks_mlps[i], False)
            frozen[f"mask_decoder.output_hypernetworks_mlps.{i}"] = f"output head unused in {s.mode} mode"
    if isinstance(model.image_encoder, TinyViT) and model.image_encoder.head is not None:
        _set_trainable(model.image_encoder.head, False)
        _set_trainable(model.image_encoder.norm_head, False)
        frozen["image_encoder.norm_head, image_encoder.head"] = "MobileSAM's unused classifier (kept to load strictly)"
    model.strategy = s
    model.frozen_parts = frozen
    model.train(model.training)  # frozen batch norms keep their statistics
    return model
