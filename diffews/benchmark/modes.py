# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""The speed modes' accuracy (``tools/benchmark.py --accuracy``): each mode's masks on a test set's
episodes against the reference setting's, with mIoU, FB-IoU and seconds per episode."""

import time
from typing import Dict

import numpy as np
import torch

__all__ = ["MODES", "mode_accuracy", "unavailable_modes"]

MODES = {  # name -> (config overrides, K/V storage dtype of the supports)
    "fp32 eager, batch 1, BACKEND torch (reference setting)": (
        ["MODEL.DIFFEWS.BACKEND", "torch"], None),
    "fp16 K/V storage (SupportSet.to(dtype=float16))": ([], torch.float16),
    "bf16 K/V storage": ([], torch.bfloat16),
    "INFERENCE_DTYPE float16": (["MODEL.DIFFEWS.INFERENCE_DTYPE", "float16"], None),
    "INFERENCE_DTYPE bfloat16": (["MODEL.DIFFEWS.INFERENCE_DTYPE", "bfloat16"], None),
    "INFERENCE_DTYPE bfloat16_vae": (["MODEL.DIFFEWS.INFERENCE_DTYPE", "bfloat16_vae"], None),
    "COMPILE True": (["MODEL.DIFFEWS.COMPILE", True], None),
    "TEST.FSS.BATCH_SIZE 8": (["TEST.FSS.BATCH_SIZE", 8], None),
    "plain path (no channels-last VAE, SUPPORT_PASS_BATCH 1)": (
        ["MODEL.DIFFEWS.VAE_CHANNELS_LAST", False, "MODEL.DIFFEWS.SUPPORT_PASS_BATCH", 1], None),
    # the ONNX Runtime backend (its export is made beside the weights, before the timing)
    "BACKEND onnxruntime (CPU execution provider)": (
        ["MODEL.DIFFEWS.BACKEND", "onnxruntime"], None),
}


def unavailable_modes() -> Dict[str, str]:
    """{mode: why it cannot run here}: the backend's modes without onnx/onnxruntime."""
    from ..modeling.onnx.export import require

    out = {}
    for name, (opts, _) in MODES.items():
        if "onnxruntime" in opts:
            try:
                require("onnx")
                require("onnxruntime")
            except ImportError as e:
                out[name] = str(e)
    return out


def _predict_episodes(model, loader, kv_dtype):
    """(episode id -> (H, W) bool mask, evaluator "fss" dict, seconds of the first batch) over a
    test loader, through the one FSS evaluation loop; the first batch holds the compilation of a
    compiled model."""
    from ..evaluation import FSSEvaluator, run_episodes

    evaluator = FSSEvaluator(loader.dataset_name, distributed=False)
    evaluator.reset()
    masks, first = {}, []
    start = time.perf_counter()

    def predict(batch):
        if kv_dtype is None:
            return model(batch)
        outputs = []  # the same building blocks as forward, the keys/values stored in kv_dtype
        for x in batch:
            s = model.encode_supports(x["support_images"], x["support_masks"]).to(dtype=kv_dtype)
            z = model.encode(model.normalize(x["image"][None]), sample=False)
            pred = model.query_pass(z, s, model.prompt_embeds_test)
            outputs += model.postprocess(model.decode(-pred))
        return outputs

    def keep(batch, outputs):
        for x, y in zip(batch, outputs):
            masks[x["episode_id"]] = y["pred_mask"].cpu()
        if not first:
            first.append(time.perf_counter() - start)

    run_episodes(predict, loader, evaluator, "speed mode", on_batch=keep, progress=False)
    return masks, evaluator.evaluate()["fss"], first[0]


def mode_accuracy(cfg, dataset_name: str, modes=None, log=print) -> Dict[str, Dict]:
    """Each speed mode of ``MODES`` on a test set's episodes against the reference setting:
    mean per-episode mask agreement, mIoU and FB-IoU, seconds per episode after the first batch,
    and seconds of the first batch (with ``COMPILE``, the compile time)."""
    from detectron2.modeling import build_model

    from ..checkpoint import load_inference_weights
    from ..data.episodes import build_fss_test_loader

    out, reference = {}, None
    for name in modes or list(MODES):
        opts, kv_dtype = MODES[name]
        c = cfg.clone()
        c.defrost()
        c.merge_from_list(["MODEL.DIFFEWS.SUPPORT_CACHE_SIZE", 0, *opts])
        model = build_model(c).eval()
        load_inference_weights(model, c)
        loader = build_fss_test_loader(c, dataset_name)
        loader.dataset_name = dataset_name
        start = time.perf_counter()
        masks, fss, first_s = _predict_episodes(model, loader, kv_dtype)
        first_n = min(c.TEST.FSS.BATCH_SIZE, len(masks))
        rest = max(len(masks) - first_n, 1)
        seconds = (time.perf_counter() - start - first_s) / rest
        if reference is None:
            reference = masks
        agree = float(np.mean([(masks[k] == reference[k]).float().mean().item() for k in masks]))
        out[name] = {"agreement": agree, "mIoU": fss["mIoU"], "FB-IoU": fss["FB-IoU"],
                     "s_per_episode": seconds, "first_batch_s": first_s}
        log(f"{name}: agreement {100 * agree:.3f}%, mIoU {fss['mIoU']:.2f}, "
            f"FB-IoU {fss['FB-IoU']:.2f}, {seconds:.3f} s/episode, first batch {first_s:.2f} s")
    return out
