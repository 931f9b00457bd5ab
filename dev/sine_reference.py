# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Reference data for tests/test_sine_reference.py, produced by the ORIGINAL SINE code.

Runs aim-uofa/SINE (commit 9ff576c) on CPU on a tiny random model: its own pre-processing, model
and post-processing for FSS (1/2/5-shot), FSIS (preprocess then test) and VOS (eval_vos's memory
loop, 2 objects), and saves the random weights (the released file's key layout), the raw inputs
and the outputs to tests/data/sine_reference.pt.gz (a gzipped torch.save of tensors). Nothing
of DiffewS is imported here (both register a "SINE" meta-architecture in detectron2).

    python dev/sine_reference.py --sine /path/to/SINE --dinov2 /path/to/dinov2 \
        [--out tests/data/sine_reference.pt.gz]

--sine: a work tree of aim-uofa/SINE at 9ff576c; --dinov2: a work tree of facebookresearch/dinov2
at 44abdbe (SINE's vendored dinov2/ is that commit's tree less dinov2/models and
dinov2/data/datasets, which its snapshot lacks; dinov2 is imported from --dinov2). What is
stubbed or replaced, all of it GPU or logging plumbing: xformers is disabled (DINOv2 falls back
to plain attention); tensorboardX (eval_fss's logger) is a stub; ``.cuda()``, CUDA events and
the fp16 autocast of eval_vos are left out (CPU, fp32); eval_vos's frame loop (its ``__main__``
block, l.314-454) is restated below calling the original's functions, and VideoReader's tensor
resize gets ``antialias=False``, the default of the torchvision 0.15 that SINE pins. The tiny
models are built from the original's classes; the episodes' data are synthetic (smooth random
images, ellipse and polygon masks).
"""

import argparse
import gzip
import io
import os
import sys
import tempfile
import types
from argparse import Namespace
from functools import partial

import numpy as np
import torch
from PIL import Image

# the tiny model and the task settings; tests/test_sine_reference.py reads them from the file
TINY = dict(embed_dim=32, depth=2, heads=2, feat=32, dec_depth=2, dec_heads=2, mlp=64,
            queries=3, fusion=1)
FSS = dict(image_size=70, pad_size=112, score_threshold=0.7, shots=(1, 2, 5))
# FSIS top-k 4 of the 3 queries x 2 classes, so that the top-k selection is exercised
FSIS = dict(min_size=98, max_size=98, pad_size=112, topk=4, score_threshold=0.0)
# weights: seed, gain of the mask embedding's last layer, exp(logit_scale); chosen so that the
# FSS maps straddle the 0.7 threshold (foreground 55-60% of each episode)
SEED, MASK_GAIN, LOGIT_SCALE = 1, 12.0, 2.0
VOS = dict(frame_size=42, image_size=98, pad_size=98, num_frame=3, decay_ratio=20.0, frames=5)


def import_original(sine: str, dinov2_root: str):
    """Put the original code on the path. ``dinov2`` is imported from the 44abdbe tree: every
    file of SINE's vendored dinov2/ is identical to it, and it has the folders that SINE's
    snapshot lacks (dinov2/models, dinov2/data/datasets)."""
    os.environ["XFORMERS_DISABLED"] = "1"
    sys.modules["tensorboardX"] = types.SimpleNamespace(SummaryWriter=object)
    sys.path[:0] = [dinov2_root, sine, os.path.join(sine, "inference_fsod")]


def build_parts(copy: str, seed: int = 0):
    """The original's DINOv2 (tiny) + DINOv2EncoderViT + MFormer of one of its model copies
    ("fss", "fsod", "vos"), initialised from ``seed``."""
    import importlib

    from dinov2.layers import MemEffAttention, NestedTensorBlock
    from dinov2.models.vision_transformer import DinoVisionTransformer

    root = {"fss": "inference_fss.model", "fsod": "fsdet.model",
            "vos": "inference_vos.model"}[copy]
    folder = "transofrmer_decoder" if copy == "fsod" else "transformer_decoder"
    encoder_cls = importlib.import_module(f"{root}.image_encoder").DINOv2EncoderViT
    mformer_cls = importlib.import_module(f"{root}.{folder}.mformer").MFormer
    torch.manual_seed(seed)
    vit = DinoVisionTransformer(
        img_size=518, patch_size=14, embed_dim=TINY["embed_dim"], depth=TINY["depth"],
        num_heads=TINY["heads"], mlp_ratio=4, init_values=1e-5, ffn_layer="mlp", block_chunks=0,
        qkv_bias=True, proj_bias=True, ffn_bias=True,
        block_fn=partial(NestedTensorBlock, attn_class=MemEffAttention))
    encoder = encoder_cls(vit.eval(), out_chans=TINY["feat"])
    decoder = mformer_cls(depth=TINY["dec_depth"], embedding_dim=TINY["feat"],
                          num_heads=TINY["dec_heads"], mlp_dim=TINY["mlp"], mask_dim=TINY["feat"],
                          fusion_layer_depth=TINY["fusion"], num_queries=TINY["queries"],
                          pre_norm=True)
    return encoder, decoder


def randomize(encoder, decoder, seed: int = 0) -> None:
    """Move every weight off its init so that each part matters (layer scales 0.3-0.5 instead
    of 1e-5, norms' scales around 1, everything else plus N(0, 0.05) noise)."""
    torch.manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in list(encoder.named_parameters()) + list(decoder.named_parameters()):
            if name.endswith("gamma"):
                p.copy_(0.3 + 0.2 * torch.rand_like(p))
            elif p.dim() <= 1 and name.endswith("weight"):
                p.mul_(1 + 0.2 * torch.randn_like(p))
            elif not name.endswith(("temp", "logit_scale")):
                p.add_(0.05 * torch.randn_like(p))
        # mask logits of a few units, so that masks and the semantic map vary across the image
        decoder.mask_embed.layers[-1].weight.mul_(MASK_GAIN)
        decoder.logit_scale.fill_(np.log(LOGIT_SCALE))


def training_state_dict(encoder, decoder):
    """The released file's layout: sine.model.model.SINE's keys + criterion.empty_weight."""
    state = {f"image_encoder.{k}": v.clone() for k, v in encoder.state_dict().items()}
    state.update({f"transformer_decoder.{k}": v.clone() for k, v in decoder.state_dict().items()})
    state["criterion.empty_weight"] = torch.tensor([1.0, 0.1])
    return state


def smooth_image(rng, h: int, w: int) -> np.ndarray:
    coarse = rng.integers(0, 256, (max(h // 12, 2), max(w // 12, 2), 3), dtype=np.uint8)
    img = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BILINEAR)).astype(np.int16)
    return np.clip(img + rng.integers(-20, 21, img.shape), 0, 255).astype(np.uint8)


def ellipse(rng, h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    cy, cx = rng.uniform(0.25, 0.75) * h, rng.uniform(0.25, 0.75) * w
    ry, rx = rng.uniform(0.12, 0.35) * h, rng.uniform(0.12, 0.35) * w
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1


def polygon(rng, h: int, w: int):
    cy, cx = rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w
    angles = np.sort(rng.uniform(0, 2 * np.pi, 7))
    r = rng.uniform(0.1, 0.3, 7) * min(h, w)
    return [float(v) for a, rr in zip(angles, r)
            for v in (cx + rr * np.cos(a), cy + rr * np.sin(a))]


# -- FSS ---------------------------------------------------------------------------------------
def load_script(sine: str, name: str):
    """tools/<name>.py of the original as a module (its __main__ block does not run)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"sine_{name}",
                                                  os.path.join(sine, "tools", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_fss(sine: str, state, rng):
    from inference_fss.data.coco import DatasetCOCO
    from inference_fss.data.dataset import FSSDataset
    from inference_fss.model.model import SINE
    from torch.utils.data.dataloader import default_collate

    eval_fss = load_script(sine, "eval_fss")
    encoder, decoder = build_parts("fss")
    model = SINE(image_encoder=encoder, transformer_decoder=decoder,
                 score_threshold=FSS["score_threshold"]).eval()
    print("FSS load:", model.load_state_dict(state, strict=False))
    FSSDataset.initialize(img_size=FSS["image_size"], datapath="", use_original_imgsize=False)
    episodes = []
    for shots in FSS["shots"]:
        sizes = [tuple(rng.integers(40, 130, 2)) for _ in range(shots + 1)]
        images = [smooth_image(rng, h, w) for h, w in sizes]
        masks = [ellipse(rng, h, w).astype(np.uint8) for h, w in sizes]
        frame = (Image.fromarray(images[0]), torch.tensor(masks[0]),
                 [Image.fromarray(x) for x in images[1:]], [torch.tensor(m) for m in masks[1:]],
                 "q", ["s"] * shots, 3, images[0].shape[:2])
        dataset = DatasetCOCO.__new__(DatasetCOCO)  # the original __getitem__ on our frame
        dataset.transform, dataset.use_original_imgsize = FSSDataset.transform, False
        dataset.load_frame = lambda frame=frame: frame
        batch = default_collate([dataset[0]])
        args = Namespace(pad_size=FSS["pad_size"])
        with torch.no_grad():
            sem = model(eval_fss.wrap_data(batch, args))["sem_seg"]
        episodes.append({"query": images[0], "query_mask": masks[0], "supports": images[1:],
                         "support_masks": masks[1:], "sem_seg": sem[0].clone(),
                         "pred_mask": (sem > model.score_threshold)[0].clone()})
        print(f"FSS {shots}-shot: foreground {episodes[-1]['pred_mask'].float().mean():.3f}, "
              f"sem_seg {sem.min():.3f}..{sem.max():.3f}")
    return episodes


# -- FSIS --------------------------------------------------------------------------------------
def _write_records(folder: str, rng, sizes, classes_per_image):
    """PNG images and detectron2 records with polygon annotations (one polygon per instance)."""
    from detectron2.structures import BoxMode

    records, images = [], []
    for i, ((h, w), classes) in enumerate(zip(sizes, classes_per_image)):
        image = smooth_image(rng, h, w)
        path = os.path.join(folder, f"{os.path.basename(folder)}_{i}.png")
        Image.fromarray(image).save(path)
        annos = []
        for c in classes:
            poly = polygon(rng, h, w)
            xs, ys = poly[0::2], poly[1::2]
            annos.append({"segmentation": [poly], "category_id": c, "iscrowd": 0,
                          "bbox": [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)],
                          "bbox_mode": BoxMode.XYWH_ABS})
        records.append({"file_name": path, "height": h, "width": w, "image_id": i,
                        "annotations": annos})
        images.append(image)
    return records, images


def run_fsis(state, rng, workdir: str):
    from detectron2.data import transforms as T
    from dinov2.data.transforms import MaybeToTensor, make_normalize_transform
    from fsdet.data.dataset_mapper_fsl import DatasetMapper
    from fsdet.model.model import SINE
    from torchvision import transforms

    encoder, decoder = build_parts("fsod")
    model = SINE(image_encoder=encoder, transformer_decoder=decoder, preprocess=True,
                 sem_seg_postprocess_before_inference=True, test_topk_per_image=FSIS["topk"],
                 score_threshold=FSIS["score_threshold"], use_id_query=False).eval()
    print("FSIS load:", model.load_state_dict(state, strict=False))
    mapper = DatasetMapper(
        False, image_size=FSIS["pad_size"],
        augmentations=[T.ResizeShortestEdge(FSIS["min_size"], FSIS["max_size"], "choice")],
        image_format="BGR", ignore_label=None, use_instance_mask=True,
        instance_mask_format="polygon", dino_transform=transforms.Compose([
            MaybeToTensor(), make_normalize_transform(mean=(0.485, 0.456, 0.406),
                                                      std=(0.229, 0.224, 0.225))]))
    os.makedirs(os.path.join(workdir, "support"))
    os.makedirs(os.path.join(workdir, "test"))
    # class 3: two instances in image 0, one in image 2; class 7: one in image 1, one in image 2
    s_records, s_images = _write_records(os.path.join(workdir, "support"), rng,
                                         [(90, 120), (110, 80), (100, 100)], [[3, 3], [7], [7, 3]])
    t_records, t_images = _write_records(os.path.join(workdir, "test"), rng,
                                         [(80, 130), (120, 96)], [[3], []])
    with torch.no_grad():  # tools/preprocess.py l.45-49: one batch of support images
        model([mapper(r) for r in s_records])
        id_labels, id_queries, seg_labels, seg_queries = model.integrate_queries()
        model.preprocess = False  # tools/test.py: the same model, buffers registered
        outputs = []
        for r in t_records:
            inst = model([mapper(r)])[0]["instances"]
            outputs.append({"masks": inst.pred_masks.bool().clone(), "scores": inst.scores.clone(),
                            "classes": inst.pred_classes.clone(),
                            "boxes": inst.pred_boxes.tensor.clone()})
            print(f"FSIS image {r['image_id']}: {len(inst)} instances, scores "
                  f"{inst.scores.min():.4f}..{inst.scores.max():.4f}")
    supports = [{"image": img, "annotations": [{"polygons": a["segmentation"],
                                                "category_id": a["category_id"]}
                                               for a in r["annotations"]]}
                for img, r in zip(s_images, s_records)]
    return {"supports": supports, "tests": t_images, "outputs": outputs,
            "seg_labels": seg_labels.clone(), "seg_queries": seg_queries.clone(),
            "id_labels": id_labels.clone(), "id_queries": id_queries.clone()}


# -- VOS ---------------------------------------------------------------------------------------
def run_vos(sine: str, state, rng, workdir: str):
    from inference_vos.inference.data.mask_mapper import MaskMapper
    from inference_vos.inference.data.video_reader_nonorm import VideoReader
    from inference_vos.inference.memory import Frame, Memory
    from inference_vos.model.model import SINE
    from torch.nn import functional as F
    from torch.utils.data.dataloader import default_collate
    from torchvision import transforms
    from torchvision.transforms import InterpolationMode

    eval_vos = load_script(sine, "eval_vos")
    args = Namespace(img_size=VOS["image_size"], pad_size=VOS["pad_size"])
    eval_vos.args = args  # wrap_instances reads the script's global args
    encoder, decoder = build_parts("vos")
    model = SINE(image_encoder=encoder, transformer_decoder=decoder, score_threshold=-1e9).eval()
    print("VOS load:", model.load_state_dict(state, strict=False))
    image_dir, mask_dir = os.path.join(workdir, "JPEGImages"), os.path.join(workdir, "Annotations")
    os.makedirs(image_dir)
    os.makedirs(mask_dir)
    h, w = 60, 90
    background = smooth_image(rng, h, w)
    yy, xx = np.mgrid[:h, :w]
    for t in range(VOS["frames"]):  # two ellipses drifting right over a textured background
        frame = background.copy()
        label = np.zeros((h, w), np.uint8)
        for obj, (cy, cx, color) in enumerate([(20, 20 + 6 * t, (250, 40, 40)),
                                               (40, 60 - 5 * t, (40, 40, 250))], 1):
            inside = ((yy - cy) / 10.0) ** 2 + ((xx - cx) / 14.0) ** 2 <= 1
            frame[inside] = color
            label[inside] = obj
        Image.fromarray(frame).save(os.path.join(image_dir, f"{t:05d}.jpg"), quality=95)
        if t == 0:
            png = Image.fromarray(label, mode="P")
            png.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * 759)
            png.save(os.path.join(mask_dir, f"{t:05d}.png"))
    reader = VideoReader("vid", image_dir, mask_dir, size=VOS["frame_size"])
    reader.im_transform = transforms.Compose([  # torchvision 0.15's tensor default: no antialias
        transforms.ToTensor(), transforms.Resize(VOS["frame_size"], InterpolationMode.BILINEAR,
                                                 antialias=False)])
    frames = [np.asarray(Image.open(os.path.join(image_dir, f)).convert("RGB"))
              for f in reader.frames]
    first_mask = np.asarray(Image.open(os.path.join(mask_dir, "00000.png")))
    mapper, memory, outputs = MaskMapper(), {}, []
    with torch.no_grad():  # tools/eval_vos.py l.320-454 without CUDA, autocast and flips
        for ti in range(len(reader)):
            data = default_collate([reader[ti]])
            rgb, msk, info = data["rgb"][0], data.get("mask"), data["info"]
            frame_id = int(info["frame"][0].strip(".jpg"))
            shape = [int(s) for s in info["shape"]]
            if msk is not None:
                msk, labels = mapper.convert_mask(msk[0].numpy(), exhaustive=False)
                msk = torch.Tensor(msk)[(torch.tensor(labels) - 1).to(torch.int64)]
                if info["need_resize"][0]:
                    msk = reader.resize_mask(msk.unsqueeze(0))[0]
                for id_mask, oid in zip(msk, labels):
                    batch = dict(support_imgs=rgb[None, None], support_masks=id_mask[None, None],
                                 class_id=torch.tensor([oid], dtype=torch.int64))
                    memory[oid] = Memory(memory_len=VOS["num_frame"], fix_first_frame=True,
                                         fix_last_frame=False, memory_decay_type="linear",
                                         memory_decay_ratio=VOS["decay_ratio"])
                    memory[oid].update_memory(Frame(obj=eval_vos.wrap_data_ref(batch, args),
                                                    frame_id=frame_id, score=1.0))
            tar_dict = eval_vos.wrap_data_tar(dict(query_img=rgb[None], query_mask=None), args)
            refs = [f.obj for mem in memory.values() for f in mem.get_memory()]
            used = {oid: [f.frame_id for f in mem.get_memory()] for oid, mem in memory.items()}
            pred = model([{"ref_dict": r, "tar_dict": tar_dict if i == 0 else None}
                          for i, r in enumerate(refs)])["id_seg"]
            pred_masks = torch.zeros_like(pred.pred_masks)
            scores = {}
            resize_size = (tar_dict["resize_height"], tar_dict["resize_width"])
            for i, oid in enumerate(pred.pred_ids.tolist()):
                pred_masks[oid - 1] = pred.pred_masks[i]
                scores[oid] = pred.scores[i].item()
                new = dict(tar_dict, instances=eval_vos.wrap_instances(
                    pred.pred_masks[i][None], oid, resize_size))
                memory[oid].update_memory(Frame(obj=new, frame_id=frame_id, score=scores[oid]))
            pred_masks = F.interpolate(pred_masks[None], shape, mode="nearest")[0]
            ids = torch.arange(1, pred_masks.shape[0] + 1)[:, None, None]
            outputs.append({"label": (pred_masks * ids).max(dim=0)[0].to(torch.uint8),
                            "masks": pred_masks.bool(), "scores": scores, "references": used})
            print(f"VOS frame {ti}: scores {scores}, references {used}, "
                  f"object pixels {[int(m.sum()) for m in pred_masks]}")
    return {"frames": frames, "first_mask": first_mask, "outputs": outputs}


def tensors_only(obj):
    """numpy arrays -> tensors, recursively (the test loads with weights_only=True)."""
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, dict):
        return {k: tensors_only(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [tensors_only(v) for v in obj]
    return obj


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sine", required=True, help="work tree of aim-uofa/SINE at 9ff576c")
    parser.add_argument("--dinov2", required=True,
                        help="work tree of facebookresearch/dinov2 at 44abdbe")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests",
                                                      "data", "sine_reference.pt.gz"))
    args = parser.parse_args()
    torch.set_num_threads(1)  # fixed reduction order
    import_original(os.path.abspath(args.sine), os.path.abspath(args.dinov2))
    encoder, decoder = build_parts("fss", SEED)
    randomize(encoder, decoder, SEED)
    state = training_state_dict(encoder, decoder)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        result = {"config": {"tiny": TINY, "fss": FSS, "fsis": FSIS, "vos": VOS},
                  "state_dict": state, "fss": run_fss(args.sine, state, rng),
                  "fsis": run_fsis(state, rng, os.path.join(tmp, "fsis")),
                  "vos": run_vos(args.sine, state, rng, os.path.join(tmp, "vos"))}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    buffer = io.BytesIO()
    torch.save(tensors_only(result), buffer)  # loadable with weights_only=True
    with open(args.out, "wb") as f:
        f.write(gzip.compress(buffer.getvalue(), mtime=0))
    print(f"wrote {args.out} ({os.path.getsize(args.out) / 2**10:.0f} KiB)")


if __name__ == "__main__":
    main()
