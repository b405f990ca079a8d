"""Study: what a micro CLIP learns on the built-in world within minutes, and when identity comes.

micro-64 (the studies' default: 8 px patches, four heads per tower) trains for 64, 256 and
1,024 steps of 128, and the same model with 4 px patches (micro-64-4px, 64 image tokens, what
every study used before) for 1,024. Besides the
evaluation's four tasks, each run is probed on 600 single objects and 400 pairs of
held-out glyphs:
- ``object_train_pairs``: the object task on *training* kind-colour pairs: does the model
  know kinds at all, away from the held-out combinations?
- ``object_named`` / ``object_named_held``: the object task in the training wording (the
  bare phrase "a small red ring" against the nine other kinds), on training and on held-out
  pairs: shape alone, without the held-out wording;
- ``object_bare``: which object on held-out pairs by the class name alone ("an image of a
  ring." against the nine other nouns, as zero-shot classifiers usually ask): the colour prior;
- ``relation_train``: "A sits left of B" against the swapped caption, on training pairs.
Then the same vision tower is trained supervised on kind (single objects, 128 steps of
128): can it see the digits at all? Writes world_learning.{csv,json} to --out (default runs/studies); the
last line is object accuracy on held-out pairs after the longest run, over chance.

    python benchmarks/study_world_learning.py            # seed 0; --seeds 0,1,2 for three
"""

import time

import torch
import torch.nn.functional as F

import clipa
from clipa.data import world
from clipa.eval.features import encode_images, encode_texts
from clipa.eval.world import attribute_accuracy
from clipa.eval.zeroshot import build_classifier, topk_accuracy
from clipa.tokenizer import tokenizer_for
from study import SIZES, args, stage, sweep, write

STEPS, BATCH, SIZE, SMALL_PATCHES, SUPERVISED_STEPS = [64, 256, 1024], 128, "micro-64", "micro-64-4px", 128
PROBES = ["object_acc1", "object_train_pairs", "object_named", "object_named_held", "object_bare", "relation_acc1",
          "relation_train"]
BARE = ["an image of a {c}.", "a photo that shows a {c}."]  # the class name alone, in the held-out wording


def scenes(held: bool, objects: int, n: int) -> tuple[list[world.Scene], world._Glyphs]:
    """``n`` fixed scenes of held-out glyphs; ``held`` picks held-out or training kind-colour pairs."""
    glyphs = world._Glyphs("test")
    gen = torch.Generator().manual_seed(world.EVAL_SEED + objects + 10 * held)
    return world.sample_scenes(n, gen, glyphs, held=held, num_objects=(objects,), distinct_kinds=objects > 1), glyphs


def embed(model, batch: list[world.Scene], glyphs: world._Glyphs) -> torch.Tensor:
    images = world.render(batch, glyphs, model.visual.image_size)
    return encode_images(model, [(images[i:i + 256], None) for i in range(0, len(images), 256)], "cpu")[0]


def kinds(batch: list[world.Scene]) -> torch.Tensor:
    return torch.tensor([s.kinds[0] for s in batch])


def probe(model) -> dict:
    """The probes above on a trained model (figures as fractions of 1)."""
    model.eval()
    tok, out = tokenizer_for(model), {}
    for held in (False, True):
        single, glyphs = scenes(held, 1, world.EVAL_SINGLE)
        img, labels = embed(model, single, glyphs), world.single_labels(single)
        if not held:
            out["object_train_pairs"] = attribute_accuracy(model, tok, img, labels, "cpu")["object_acc1"]
        named = attribute_accuracy(model, tok, img, labels, "cpu", templates=["{A}"])
        out["object_named_held" if held else "object_named"] = named["object_acc1"]
    classifier = build_classifier(model, tok, world.KINDS, BARE, "cpu").float().cpu()
    out["object_bare"] = topk_accuracy(img @ classifier, kinds(single), 1)
    pairs, glyphs = scenes(False, 2, world.EVAL_PAIRS)
    true = encode_texts(model, tok, [s.caption("{A} sits {ab} {B}") for s in pairs], "cpu").cpu()
    swapped = encode_texts(model, tok, [s.mirrored().caption("{A} sits {ab} {B}") for s in pairs], "cpu").cpu()
    img = embed(model, pairs, glyphs)
    out["relation_train"] = ((img * true).sum(1) > (img * swapped).sum(1)).float().mean().item()
    return out


def supervised(seed: int = 0) -> dict:
    """micro-64's vision tower and a linear head trained on the kind of single training-pair
    objects; accuracy on held-out glyphs of training and of held-out pairs."""
    torch.manual_seed(seed)
    model = clipa.create_model("clipa-tiny", **SIZES[SIZE]).visual
    head = torch.nn.Linear(SIZES[SIZE]["embed_dim"], len(world.KINDS))
    optimizer = torch.optim.AdamW([*model.parameters(), *head.parameters()], lr=3e-3, weight_decay=0.0)
    glyphs = world._Glyphs("train")
    for step in range(SUPERVISED_STEPS):
        batch = world.sample_scenes(BATCH, torch.Generator().manual_seed(step), glyphs, held=False, num_objects=(1,))
        loss = F.cross_entropy(head(model(world.render(batch, glyphs, world.CANVAS))), kinds(batch))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    out = {}
    with torch.no_grad():
        for name, held in [("supervised_train_pairs", False), ("supervised_held", True)]:
            batch, test_glyphs = scenes(held, 1, world.EVAL_SINGLE)
            logits = head(model(world.render(batch, test_glyphs, world.CANVAS)))
            out[name] = topk_accuracy(logits, kinds(batch), 1)
    return out


def main() -> None:
    a = args(__doc__, seeds="0")
    t0 = time.perf_counter()
    settings = {f"{n} steps": dict(size=SIZE, probe=probe, fields={"steps": n, "patch": 8},
                                   stages=[stage("main", n * BATCH, batch_size=BATCH)]) for n in STEPS}
    settings[f"{STEPS[-1]} steps, 4 px patches"] = dict(size=SMALL_PATCHES, probe=probe,
                                                        fields={"steps": STEPS[-1], "patch": 4},
                                                        stages=[stage("main", STEPS[-1] * BATCH, batch_size=BATCH)])
    rows = sweep("world-learning", settings, a.seeds, a.jobs)
    sup = {"setting": f"vision tower supervised on kind, {SUPERVISED_STEPS} steps", **supervised()}
    write("world_learning", rows, [sup], time.perf_counter() - t0, a.out)
    for r in rows:
        print(f"  {r['setting']:21s} seed {r['seed']} " + "  ".join(f"{k} {r[k]:.3f}" for k in PROBES))
    print(f"  {sup['setting']}: training pairs {sup['supervised_train_pairs']:.3f}, held-out pairs {sup['supervised_held']:.3f}")
    print(f"finished in {time.perf_counter() - t0:.0f} s")
    last = [r for r in rows if r["patch"] == 8][-1]
    print(f"object accuracy on held-out pairs after {last['steps']} steps over chance: "
          f"{last['object_acc1'] / 0.1:.2f}")


if __name__ == "__main__":
    main()
