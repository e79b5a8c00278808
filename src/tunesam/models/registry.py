"""The SAM family by name: a plain registry of numbers and one builder."""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from tunesam.models.image_encoder import ImageEncoderViT
from tunesam.models.mask_decoder import MaskDecoder
from tunesam.models.prompt_encoder import PromptEncoder
from tunesam.models.segmenter import SamSegmenter
from tunesam.models.tiny_vit import TinyViT
from tunesam.models.transformer import TwoWayTransformer


@dataclass(frozen=True)
class ArchSpec:
    """What distinguishes one member of the family.

    ``family`` is ``vit`` (SAM's ViT: ``embed_dim``, ``depth``, ``num_heads``,
    ``global_attn_indexes``, ``window_size``) or ``tinyvit`` (MobileSAM: per-stage
    ``embed_dims``, ``depths``, ``stage_heads``, ``window_sizes``; ``stem_stride`` and
    ``classifier`` tell MobileSAM's TinyViT from LiteMedSAM's). ``patch_size`` is the
    encoder's total stride (input pixels per embedding cell); ``native_size`` the input the
    published weights were trained at, the default input; ``pixel_norm`` the intensity
    normalisation those weights expect and ``interpolation`` the image resize of their own
    preprocessing.
    """

    name: str
    family: str
    description: str
    embed_dim: int = 0
    depth: int = 0
    num_heads: int = 0
    global_attn_indexes: tuple[int, ...] = ()
    window_size: int = 14
    embed_dims: tuple[int, ...] = ()
    depths: tuple[int, ...] = ()
    stage_heads: tuple[int, ...] = ()
    window_sizes: tuple[int, ...] = ()
    prompt_dim: int = 256
    decoder_mlp_dim: int = 2048
    decoder_heads: int = 8
    mask_in_chans: int = 16
    iou_hidden_dim: int = 256
    patch_size: int = 16
    stem_stride: int = 4
    classifier: bool = True
    native_size: int = 1024
    pixel_norm: str = "sam"
    interpolation: str = "bilinear"
    official_checkpoints: tuple[str, ...] = field(default=())
    test_only: bool = False


ARCHS: dict[str, ArchSpec] = {
    spec.name: spec
    for spec in (
        ArchSpec(
            "vit_b", "vit", "SAM ViT-B", embed_dim=768, depth=12, num_heads=12,
            global_attn_indexes=(2, 5, 8, 11),
            official_checkpoints=("sam_vit_b_01ec64.pth", "medsam_vit_b.pth"),
        ),
        ArchSpec(
            "vit_l", "vit", "SAM ViT-L", embed_dim=1024, depth=24, num_heads=16,
            global_attn_indexes=(5, 11, 17, 23), official_checkpoints=("sam_vit_l_0b3195.pth",),
        ),
        ArchSpec(
            "vit_h", "vit", "SAM ViT-H", embed_dim=1280, depth=32, num_heads=16,
            global_attn_indexes=(7, 15, 23, 31), official_checkpoints=("sam_vit_h_4b8939.pth",),
        ),
        ArchSpec(
            "vit_t", "tinyvit", "MobileSAM ViT-T (TinyViT-5M)", embed_dims=(64, 128, 160, 320),
            depths=(2, 2, 6, 2), stage_heads=(2, 4, 5, 10), window_sizes=(7, 7, 14, 7),
            official_checkpoints=("mobile_sam.pt",),
        ),
        ArchSpec(
            "litemedsam", "tinyvit", "LiteMedSAM (TinyViT-5M, stride-1 stem, input 256)",
            embed_dims=(64, 128, 160, 320), depths=(2, 2, 6, 2), stage_heads=(2, 4, 5, 10),
            window_sizes=(7, 7, 14, 7), stem_stride=1, classifier=False, patch_size=4, native_size=256,
            pixel_norm="minmax", interpolation="area", official_checkpoints=("lite_medsam.pth",),
        ),
        # Tiny variants for fast CPU tests: same code paths (windows with padding, global
        # attention, several heads, every TinyViT stage), a few thousand parameters.
        ArchSpec(
            "vit_test", "vit", "test-only tiny ViT", embed_dim=32, depth=4, num_heads=2,
            global_attn_indexes=(1, 3), window_size=3, prompt_dim=32, decoder_mlp_dim=64,
            decoder_heads=2, mask_in_chans=8, iou_hidden_dim=32, test_only=True,
        ),
        ArchSpec(
            "vit_t_test", "tinyvit", "test-only tiny TinyViT", embed_dims=(8, 16, 24, 32),
            depths=(1, 2, 2, 2), stage_heads=(1, 2, 2, 2), window_sizes=(2, 2, 3, 2),
            prompt_dim=32, decoder_mlp_dim=64, decoder_heads=2, mask_in_chans=8,
            iou_hidden_dim=32, test_only=True,
        ),
        ArchSpec(
            "litemedsam_test", "tinyvit", "test-only tiny LiteMedSAM-style TinyViT", embed_dims=(8, 16, 24, 32),
            depths=(1, 2, 2, 2), stage_heads=(1, 2, 2, 2), window_sizes=(2, 2, 3, 2), stem_stride=1,
            classifier=False, patch_size=4, native_size=64, pixel_norm="minmax", interpolation="area", prompt_dim=32,
            decoder_mlp_dim=64, decoder_heads=2, mask_in_chans=8, iou_hidden_dim=32, test_only=True,
        ),
    )
}


def get_spec(arch: str) -> ArchSpec:
    try:
        return ARCHS[arch]
    except KeyError:
        raise ValueError(f"unknown architecture {arch!r}; expected one of {', '.join(ARCHS)}") from None


def build_image_encoder(spec: ArchSpec, image_size: int) -> nn.Module:
    if spec.family == "vit":
        return ImageEncoderViT(
            img_size=image_size, patch_size=spec.patch_size, embed_dim=spec.embed_dim,
            depth=spec.depth, num_heads=spec.num_heads, out_chans=spec.prompt_dim,
            window_size=spec.window_size, global_attn_indexes=spec.global_attn_indexes,
        )
    return TinyViT(
        img_size=image_size, embed_dims=spec.embed_dims, depths=spec.depths,
        num_heads=spec.stage_heads, window_sizes=spec.window_sizes, out_chans=spec.prompt_dim,
        stem_stride=spec.stem_stride, classifier=spec.classifier,
    )


def build_sam(
    arch: str, num_classes: int = 1, image_size: int | None = None, pixel_norm: str | None = None
) -> SamSegmenter:
    """A randomly initialised segmenter (see :func:`tunesam.build_model` for weights).

    ``image_size`` and ``pixel_norm`` default to the architecture's own (``native_size``,
    ``pixel_norm``): 1024 and SAM's mean/std, or 256 and per-image min-max for LiteMedSAM.
    """
    spec = get_spec(arch)
    image_size = image_size or spec.native_size
    pixel_norm = pixel_norm or spec.pixel_norm
    if image_size % 32 or image_size < 32:
        raise ValueError(f"the input size (--image-size) must be a positive multiple of 32, got {image_size}")
    grid = image_size // spec.patch_size
    prompt_encoder = PromptEncoder(
        embed_dim=spec.prompt_dim,
        image_embedding_size=(grid, grid),
        input_image_size=(image_size, image_size),
        mask_in_chans=spec.mask_in_chans,
    )
    decoder = MaskDecoder(
        transformer_dim=spec.prompt_dim,
        transformer=TwoWayTransformer(
            depth=2, embedding_dim=spec.prompt_dim, num_heads=spec.decoder_heads,
            mlp_dim=spec.decoder_mlp_dim,
        ),
        num_multimask_outputs=max(3, num_classes + 1),
        iou_head_hidden_dim=spec.iou_hidden_dim,
    )
    model = SamSegmenter(
        build_image_encoder(spec, image_size), prompt_encoder, decoder,
        num_classes=num_classes, pixel_norm=pixel_norm, arch=arch,
    )
    model.interpolation = spec.interpolation
    return model
