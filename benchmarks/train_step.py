"""Full training step (forward, loss, backward, AdamW) of clipa vs OpenCLIP, same config.

Both models get identical weights (OpenCLIP's state_dict loaded into clipa), the same batch,
optimizer settings and thread count; steps alternate between the two so machine load hits
both alike. Prints each config's times and, last, clipa's speed over OpenCLIP's (the worst
of the configs). Usage: python benchmarks/train_step.py [--threads 2] [--steps 5]
"""

from __future__ import annotations

import argparse
import time

import open_clip
import torch
from open_clip.loss import ClipLoss

import clipa
from clipa.loss import clip_loss

CONFIGS = {
    # name: (registry name, OpenCLIP config edits, clipa overrides, image size, batch)
    "ViT-B-32 (4 layers), 224 px, text 77": (
        "ViT-B-32", {}, {}, 224, 32),
    "CLIPA-style B/16 (4 layers): avg pool, no pre-LN, bidirectional text, 112 px, text 32": (
        "ViT-B-16",
        {"vision_cfg": {"no_ln_pre": True, "pool_type": "avg", "final_ln_after_pool": True, "image_size": 112},
         "text_cfg": {"pool_type": "last", "no_causal_mask": True, "context_length": 32}},
        {"vision": {"ln_pre": False, "pool": "avg", "final_ln_after_pool": True, "image_size": 112},
         "text": {"pool": "last", "causal": False, "context_length": 32}},
        112, 32),
}
LAYERS = 4


def build(name, oc_edits, ours_edits):
    cfg = open_clip.get_model_config(name)
    for tower, edits in oc_edits.items():
        cfg[tower].update(edits)
    cfg["vision_cfg"]["layers"] = cfg["text_cfg"]["layers"] = LAYERS
    ref = open_clip.model.CLIP(**cfg)
    ours_edits = {k: dict(v) for k, v in ours_edits.items()}
    ours_edits.setdefault("vision", {})["layers"] = LAYERS
    ours_edits.setdefault("text", {})["layers"] = LAYERS
    ours = clipa.create_model(name, **ours_edits)
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref.train(), ours.train()


def step_fn(model, loss_kind):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.2, foreach=True)
    ref_loss = ClipLoss()

    def step(images, text):
        opt.zero_grad(set_to_none=True)
        if loss_kind == "openclip":
            loss = ref_loss(*model(images, text))  # (img, txt, exp(t))
        else:
            loss = clip_loss(*model(images, text))  # (img, txt, t, None)
        loss.backward()
        opt.step()
        return loss.item()

    return step


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
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
        steps = {"openclip": step_fn(ref, "openclip"), "clipa": step_fn(ours, "clipa")}
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
              f"clipa {best['clipa']:.3f} s/step, OpenCLIP {best['openclip']:.3f} s/step, speed ratio {ratio:.3f}")
    print(f"clipa speed / OpenCLIP speed (worst config): {min(ratios):.3f}")


if __name__ == "__main__":
    main()
