#!/usr/bin/env python
# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Dev-only: every presence signal of a quick-start-sized model on held-out episodes (issue 28
experiments), without deciding: AUROC per signal, mIoU of the present episodes, and for each
signal the share of absent / present queries under the threshold of best balanced accuracy.

  python dev/presence_probe.py WEIGHTS [--sd output/quickstart/tiny_sd] [--episodes 100]
      [--dataset synthetic_fss_test] [KEY VALUE ...]

Episodes: the benchmark's protocol episodes (TEST.FSS.SEED 0, --episodes of them) followed by as
many absent-target ones (TEST.FSS.NEGATIVE_RATIO 1), through the benchmark path (model forward).
"""

import argparse
import os
import sys

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "quick_schedules", "diffews_tiny_synthetic_cpu.yaml")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("weights")
    p.add_argument("--sd", default="output/quickstart/tiny_sd")
    p.add_argument("--episodes", type=int, default=100)
    p.add_argument("--dataset", default="synthetic_fss_test")
    p.add_argument("opts", nargs="*")
    args = p.parse_args()
    torch.set_num_threads(int(os.environ.get("THREADS", "2")))
    from detectron2.modeling import build_model

    from diffews.checkpoint import DiffewSCheckpointer
    from diffews.config import build_config
    from diffews.data.episodes import build_fss_test_loader
    from diffews.evaluation import FSSEvaluator
    from diffews.evaluation.presence import auroc

    cfg = build_config(CONFIG, ["MODEL.DIFFEWS.PRETRAINED", args.sd, "MODEL.WEIGHTS", args.weights,
                                "TEST.FSS.NUM_EPISODES", args.episodes,
                                "TEST.FSS.NEGATIVE_RATIO", 1.0, *args.opts])
    model = build_model(cfg).eval()
    DiffewSCheckpointer(model).load(args.weights)
    model.measure_attention = True
    ev = FSSEvaluator(args.dataset, distributed=False)
    ev.reset()
    rows = []
    with torch.no_grad():
        for batch in build_fss_test_loader(cfg, args.dataset):
            outs = model(batch)
            ev.process(batch, outs)
            for inp, out in zip(batch, outs):
                rows.append((not inp.get("negative", False), out["signals"],
                             bool(out["pred_mask"].any())))
    res = ev.evaluate()["fss"]
    y = np.array([r[0] for r in rows])
    print(f"{args.weights}: {int(y.sum())} present + {int((~y).sum())} absent; "
          f"mIoU-present {res['mIoU-present']:.2f}")
    for name in rows[0][1]:
        s = np.array([r[1][name] for r in rows])
        best = max(np.unique(s), key=lambda t: ((s[~y] < t).mean() + (s[y] >= t).mean()))
        print(f"  {name:<10} AUROC {auroc(y, s):.3f}  best-balanced t={best:.4f}: absent under "
              f"{100 * (s[~y] < best).mean():.0f}%, present under {100 * (s[y] < best).mean():.0f}%"
              f"  (mean present {s[y].mean():.3f} absent {s[~y].mean():.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
