"""Full training step of clipa vs OpenCLIP, full-depth towers (12 + 12 layers), same config.

clipa runs its real step (``clipa.train.step.TrainStep``: forward, loss, backward, gradient
clipping, fused AdamW, temperature clamp); OpenCLIP the same step written as its training
loop does it (``ClipLoss``, backward, ``clip_grad_norm_``, the same fused AdamW, clamp).
Both models get identical weights (OpenCLIP's state_dict loaded into clipa), the same batch
and thread count; steps alternate between the two so machine load hits both alike. Prints
each config's best times and the load average, and last clipa's speed over OpenCLIP's (the
worst of the configs). Usage: python benchmarks/train_step.py [--threads 2] [--steps 3]
"""

from __future__ import annotations

import argparse
import os
import time

import open_clip
import torch
from open_clip.loss import ClipLoss

import clipa
from clipa.loss import MAX_LOGIT_SCALE, clip_loss
from clipa.train.step import TrainStep

CONFIGS = {
    # name: (registry name, OpenCLIP config edits, clipa overrides, image size, batch)
    "ViT-B-32 (12 + 12 layers), 224 px, text 77": (
        "ViT-B-32", {}, {}, 224, 32),
    "CLIPA-style B/16 (12 + 12 layers): avg pool, no pre-LN, bidirectional text, 112 px, text 32": (
        "ViT-B-16",
        {"vision_cfg": {"no_ln_pre": True, "pool_type": "avg", "final_ln_after_pool": True, "image_size": 112},
         "text_cfg": {"pool_type": "last", "no_causal_mask": True, "context_length": 32}},
        {"vision": {"ln_pre": False, "pool": "avg", "final_ln_after_pool": True, "image_size": 112},
         "text": {"pool": "last", "causal": False, "context_length": 32}},
        112, 32),
}
GRAD_CLIP = 1.0


def build(name, oc_edits, ours_edits):
    cfg = open_clip.get_model_config(name)
    for tower, edits in oc_edits.items():
        cfg[tower].update(edits)
    ref = open_clip.model.CLIP(**cfg)
    ours = clipa.create_model(name, **ours_edits)
    assert len(ours.visual.transformer.resblocks) == len(ours.transformer.resblocks) == 12
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref.train(), ours.train()


def optimizer(model):
    return torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.2, fused=True)


def openclip_step(model):
    opt, ref_loss = optimizer(model), ClipLoss()

    def step(images, text):
        opt.zero_grad(set_to_none=True)
        loss = ref_loss(*model(images, text))  # (img, txt, exp(t))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
        return loss

    return step


def clipa_step(model):
    return TrainStep(model, model.logit_scale, optimizer(model), clip_loss, device=torch.device("cpu"),
                     grad_clip=GRAD_CLIP)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    ratios = []
    for label, (name, oc_edits, ours_edits, size, batch) in CONFIGS.items():
        ref, ours = build(name, oc_edits, ours_edits)
        ctx = ours.context_length
        images = torch.randn(batch, 3, size, size)
        text = torch.randint(1, 49000, (batch, ctx))
        text[:, -1] = 49407
        steps = {"openclip": openclip_step(ref), "clipa": clipa_step(ours)}
        times = {k: [] for k in steps}
        for k, fn in steps.items():  # warm-up
            fn(images, text)
        for _ in range(args.steps):
            for k, fn in steps.items():
                t0 = time.perf_counter()
                fn(images, text)
                times[k].append(time.perf_counter() - t0)
        best = {k: min(v) for k, v in times.items()}
        ratio = best["openclip"] / best["clipa"]
        ratios.append(ratio)
        print(f"{label}: batch {batch}, {args.threads} threads, best of {args.steps}: "
              f"clipa {best['clipa']:.3f} s/step, OpenCLIP {best['openclip']:.3f} s/step, speed ratio {ratio:.3f} "
              f"(load average {os.getloadavg()[0]:.1f})")
    print(f"clipa speed / OpenCLIP speed (worst config): {min(ratios):.3f}")


if __name__ == "__main__":
    main()
