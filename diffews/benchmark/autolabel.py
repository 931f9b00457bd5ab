# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Throughput of autolabelling (``tools/autolabel.py``) with and without reuse.

* **reuse** (as built, ``tasks.autolabel.label_image``): every class's supports are encoded once
  (timed apart), then per image one VAE encode and ``predict_many`` against all C sets
  (``TEST.FSOD.BATCH_SIZE`` sets per query pass), then the instance postprocessing;
* **per-episode** (what an episodic FSS loop does): per image and class, the class's supports are
  encoded again (VAE encodes and support pass) and the image is encoded again for that class
  (``encode_supports`` + ``predict``), then the same postprocessing.

Both give the same masks (each support and query is encoded in its own call either way); only
the repeated work differs. Run::

    python -m diffews.benchmark.autolabel --classes 4 --images 24    # tiny test model, CPU
"""

import argparse
import os
import tempfile
import time
from typing import Dict, List

import numpy as np
import torch

__all__ = ["throughput"]


def throughput(cfg, source, images: List[np.ndarray]) -> Dict[str, float]:
    """Images per second of both paths on ``images`` (H x W x 3 uint8) with the supports of
    ``source`` (``tasks.autolabel.read_supports``); one warm-up image each, not timed.

    Seconds are this process's CPU time (``time.process_time``): on a shared machine the wall
    clock measures the neighbours; with one torch thread CPU time is the time of a free core."""
    from ..predictor import build_predictor
    from ..predictor.instances import predictions_to_instances
    from ..tasks.autolabel import label_image, support_mask
    from ..utils.image import read_image

    predictor = build_predictor(cfg)
    supports = []
    for c, records in enumerate(source.records):
        ims = [read_image(r["file_name"]) for r in records]
        supports.append((ims, [support_mask(r, c, im.shape[:2])
                               for r, im in zip(records, ims)]))
    with torch.no_grad():
        t = time.process_time()
        sets = [predictor.encode_supports(ims, masks) for ims, masks in supports]
        encode_s = time.process_time() - t
        label_image(predictor, sets, images[0], cfg)
        t = time.process_time()
        for image in images:
            label_image(predictor, sets, image, cfg)
        reuse_s = time.process_time() - t

        def per_episode(image):
            preds = [predictor.predict([image], predictor.encode_supports(ims, masks))[0]
                     for ims, masks in supports]
            return predictions_to_instances(preds, image.shape[:2], **predictor.instances)

        per_episode(images[0])
        t = time.process_time()
        for image in images:
            per_episode(image)
        episode_s = time.process_time() - t
    n = len(images)
    return {"images": n, "classes": len(sets), "shots": len(sets[0]),
            "supports_once_s": encode_s, "reuse_img_per_s": n / reuse_s,
            "per_episode_img_per_s": n / episode_s, "speedup": episode_s / reuse_s}


def _write(stem, seed: int, c: int, h: int = 20, w: int = 24):
    """A rectangle of class ``c``'s colour on noise (and its 0/255 mask when ``stem`` is given:
    ``stem.jpg`` + ``stem.png``, the class-folder layout); returns the image (as read back)."""
    from PIL import Image

    from ..utils.image import read_image

    rng = np.random.RandomState(seed)
    image = rng.randint(0, 120, (h, w, 3)).astype(np.uint8)
    mask = np.zeros((h, w), bool)
    y, x = rng.randint(0, h // 2), rng.randint(0, w // 2)
    mask[y:y + rng.randint(4, h // 2 + 1), x:x + rng.randint(4, w // 2 + 1)] = True
    image[mask] = [(230, 40, 40), (40, 220, 60), (50, 60, 230), (220, 220, 40)][c % 4]
    if stem:
        os.makedirs(os.path.dirname(stem), exist_ok=True)
        Image.fromarray(image).save(stem + ".jpg", quality=95)
        Image.fromarray((mask * 255).astype(np.uint8)).save(stem + ".png")
        image = read_image(stem + ".jpg")
    return image


def main(argv=None) -> None:
    from ..config import build_config
    from ..quickstart.tiny_sd import build_tiny_sd
    from ..tasks.autolabel import read_supports

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--classes", type=int, default=4)
    p.add_argument("--shots", type=int, default=2)
    p.add_argument("--images", type=int, default=24)
    p.add_argument("--size", type=int, default=64, help="working size (INPUT.IMAGE_SIZE)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # CPU time = wall time of one free core (see ``throughput``)
    root = tempfile.mkdtemp(prefix="autolabel_bench_")
    names = [f"class{c}" for c in range(args.classes)]
    for c, name in enumerate(names):
        for i in range(args.shots):
            _write(os.path.join(root, "supports", name, f"{i}"), 100 * c + i, c)
    images = [_write(None, 5000 + i, i % args.classes) for i in range(args.images)]
    cfg = build_config(opts=["MODEL.DIFFEWS.PRETRAINED", build_tiny_sd(os.path.join(root, "sd"), 0),
                             "INPUT.IMAGE_SIZE", args.size, "MODEL.DEVICE", "cpu",
                             "MODEL.DIFFEWS.ALLOW_UNTRAINED", True])
    r = throughput(cfg, read_supports(os.path.join(root, "supports")), images)
    print(f"{r['classes']} classes x {r['shots']} shots, {r['images']} images (20x24) at "
          f"{args.size} px, 1 thread, CPU seconds: supports encoded once in "
          f"{r['supports_once_s']:.2f} s; reuse {r['reuse_img_per_s']:.2f} images/s, "
          f"per-episode {r['per_episode_img_per_s']:.2f} images/s ({r['speedup']:.1f}x)")


if __name__ == "__main__":
    main()
