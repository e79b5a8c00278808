#!/usr/bin/env bash
# ViT's relative-position bias folded into q and k (default) against passing it as an attention
# mask: one training step at 1024, batch 4, bf16, and the two forms' outputs in bf16 on CUDA.
# SMALL=1 runs the same on the CPU at toy size first.
source "$(dirname "$0")/gpu_env.sh"
if [ "${SMALL:-0}" = 1 ]; then A=vit_test; H=vit_test; SIZE=64; DEV=cpu; else A=vit_b; H=vit_h; SIZE=1024; DEV=cuda; fi
{
  $PY -m pytest -q -p no:cacheprovider tests/models/test_forward_backward.py 2>&1 | tail -3
  $T bench --arch $A --tune encoder-decoder decoder --method vanilla lora --image-size $SIZE --device $DEV \
    --repeats 5 --warmup 2 --baseline rel-pos-mask --json "$OUT/rel_pos_$A.json"
  $T bench --arch $H --tune encoder-decoder --method lora --image-size $SIZE --device $DEV \
    --repeats 5 --warmup 2 --baseline rel-pos-mask --json "$OUT/rel_pos_$H.json"
  $PY - $A $SIZE $DEV <<'PYEOF'
import sys, torch
from tunesam.models import image_encoder
from tunesam.models.registry import build_sam
arch, size, dev = sys.argv[1], int(sys.argv[2]), sys.argv[3]
torch.manual_seed(0)
model = build_sam(arch, num_classes=2, image_size=size).to(dev).eval()
for blk in model.image_encoder.blocks:  # non-zero tables, as in official checkpoints
    if blk.attn.use_rel_pos:
        torch.nn.init.normal_(blk.attn.rel_pos_h, std=0.5)
        torch.nn.init.normal_(blk.attn.rel_pos_w, std=0.5)
x = torch.rand(2, 3, size, size, device=dev) * 255
outs = {}
for folded in (True, False):
    image_encoder.REL_POS_IN_QK = folded
    for bf16 in (True, False):
        with torch.no_grad(), torch.autocast(device_type=dev, dtype=torch.bfloat16, enabled=bf16):
            outs[folded, bf16] = model.image_encoder(model.preprocess(x)).float()
ref = outs[False, False]
print(f"image embeddings, mean |value| {ref.abs().mean().item():.4f}; mean |diff| from the fp32 mask form:")
for (folded, bf16), o in outs.items():
    print(f"  {'folded' if folded else 'mask  '} {'bf16' if bf16 else 'fp32'}: {(o - ref).abs().mean().item():.6f}"
          f" (max {(o - ref).abs().max().item():.4f})")
PYEOF
} 2>&1 | grep -v Warning | tee "$OUT/rel_pos.log"
