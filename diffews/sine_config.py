# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Every config key of the SINE model, its training and its tasks (``MODEL.SINE.*``,
``INPUT.SINE_TRAIN.*``, ``DATASETS.SINE_TRAIN.*``), in one adder; ``config.build_config``
applies it beside ``add_diffews_config``."""

from detectron2.config import CfgNode as CN

__all__ = ["add_sine_config"]


def add_sine_config(cfg: CN) -> None:
    """Add every SINE key to a detectron2 config, in place (call after ``add_diffews_config``,
    which holds the shared ``INPUT.IMAGE_SIZE``, ``TEST.FSOD.*`` and ``TEST.VOS.*`` keys).

    SINE (arXiv 2410.04842, aim-uofa/SINE at 9ff576c): a frozen DINOv2 ViT, a neck and a Matching
    Transformer decoder (docs/SINE.md). Defaults are the released DINOv2-L model's values, as
    the original's evaluation scripts build it (tools/eval_fss.py l.146-167). The meta-architecture
    is chosen by a config (``MODEL.META_ARCHITECTURE: "SINE"``, configs/sine/), not here.
    """
    cfg.MODEL.SINE = CN()
    cfg.MODEL.SINE.ENCODER = CN()
    # DINOv2 size, built with timm's vit_{small,base,large,giant}_patch14_dinov2 (patch 14,
    # position grid 37x37 = img_size 518, layer scale 1e-5): "vit_small" | "vit_base" |
    # "vit_large" | "vit_giant2" (tools/eval_fss.py l.157 --dinov2-size, default vit_large).
    cfg.MODEL.SINE.ENCODER.ARCH = "vit_large"
    # Overrides of the arch's width, depth and heads; 0 = the arch's own value (tests build a
    # tiny ViT with these; a real checkpoint needs the arch's values).
    cfg.MODEL.SINE.ENCODER.EMBED_DIM = 0
    cfg.MODEL.SINE.ENCODER.DEPTH = 0
    cfg.MODEL.SINE.ENCODER.NUM_HEADS = 0
    # An official DINOv2 checkpoint (dinov2_vitl14_pretrain.pth: flat keys, maybe under
    # "teacher", maybe prefixed module./backbone.) or a hub id such as hf://facebook/dinov2-large
    # (a transformers Dinov2Model folder, converted on load). Loaded when the model is built, as
    # the original's build_model does (inference_fss/model/model.py l.174);
    # optional when MODEL.WEIGHTS holds the encoder (image_encoder.encoder.*), which then wins.
    cfg.MODEL.SINE.ENCODER.WEIGHTS = ""
    # Neck output = decoder width (--feat_chans 256).
    cfg.MODEL.SINE.FEAT_CHANS = 256
    # True: the neck is one 1x1 conv; False (released): 1x1 conv, LayerNorm2d, 3x3 conv,
    # LayerNorm2d (--image_enc_use_fc; inference_fss/model/image_encoder/dinov2.py l.34-58).
    cfg.MODEL.SINE.ENCODER_USE_FC = False
    cfg.MODEL.SINE.DECODER = CN()
    # Matching Transformer (MFormer): decoder layers, heads, FFN width, mask embedding width
    # (must equal FEAT_CHANS), learnable instance queries, fusion layers, pre-norm decoder
    # layers (tools/eval_fss.py l.160-166; the fusion layers are always post-norm).
    cfg.MODEL.SINE.DECODER.DEPTH = 6
    cfg.MODEL.SINE.DECODER.NHEADS = 8
    cfg.MODEL.SINE.DECODER.MLP_DIM = 2048
    cfg.MODEL.SINE.DECODER.MASK_DIM = 256
    cfg.MODEL.SINE.DECODER.NUM_QUERIES = 200
    cfg.MODEL.SINE.DECODER.FUSION_DEPTH = 1
    cfg.MODEL.SINE.DECODER.PRE_NORM = True
    # Working size: FSS resizes images square to IMAGE_SIZE (--img-size 518); VOS resizes the
    # longer side to it (eval_vos --img-size 1036). INPUT.IMAGE_SIZE must equal it for FSS.
    cfg.MODEL.SINE.IMAGE_SIZE = 518
    # Images are zero-padded bottom/right (after normalisation) to PAD_SIZE^2, a multiple of the
    # patch size 14 (--pad-size: FSS 896, FSIS 896, VOS 1036). The decoder needs the square.
    cfg.MODEL.SINE.PAD_SIZE = 896
    # FSS: foreground = sem_seg > SCORE_THRESHOLD (strict, tools/eval_fss.py l.108, 0.7).
    # FSIS: instances kept if score > it (Base-SINE.yaml: 0.0); VOS: -1e9 (keeps every object).
    cfg.MODEL.SINE.SCORE_THRESHOLD = 0.7
    # ID queries (one per reference instance) in the decoder: True for FSS and VOS; False for
    # FSIS (inference_fsod/configs/Base-SINE.yaml use_id_query False).
    cfg.MODEL.SINE.USE_ID_QUERY = True
    # Presence (is the supports' object in the query at all?): the signal is the best class
    # probability over the instance queries (softmax over class + "no object"); a query below
    # this threshold is judged absent (empty mask, result "present" False; in instance
    # segmentation its class gives no instance). < 0 = no decision, as the published protocols
    # assume (the object is present).
    cfg.MODEL.SINE.PRESENCE_THRESHOLD = -1.0
    # Inference refuses to run with MODEL.WEIGHTS empty (the decoder would be random and the
    # numbers plausible-looking); True runs the untrained model on purpose (tests, timing).
    cfg.MODEL.SINE.ALLOW_UNTRAINED = False

    # VOS: frames are first resized so that their shorter side is FRAME_SIZE (bilinear, eval_vos
    # --size 518, inference_vos/inference/data/video_reader_nonorm.py l.46-49); the model input
    # then has its longer side at MODEL.SINE.IMAGE_SIZE. Masks come back at this frame size and
    # are resized (nearest) to the original frame.
    cfg.TEST.VOS.FRAME_SIZE = 518

    # -- training (tools/train_net.py with configs/sine/; diffews/modeling/sine/criterion.py) --
    # The loss and matcher of the released model's training run (aim-uofa/SINE tools/train.py
    # l.97-104, TRAINING.md).
    cfg.MODEL.SINE.LOSS = CN()
    loss = cfg.MODEL.SINE.LOSS
    # Weight of the class terms: the matcher's -p[class] cost and both cross-entropies
    # (loss_ce_ins, loss_ce_id). Original --class_weight 2.0.
    loss.CLASS_WEIGHT = 2.0
    # Weight of the point-sampled mean BCE, in the matching cost and in loss_mask (--mask_weight).
    loss.MASK_WEIGHT = 5.0
    # Weight of the point-sampled dice loss, in the matching cost and in loss_dice (--dice_weight).
    loss.DICE_WEIGHT = 5.0
    # Class weight of "no object" in both cross-entropies (--no_object_weight); the other
    # classes weigh 1.
    loss.NO_OBJECT_WEIGHT = 0.1
    # Points per mask for the mask costs (uniform) and the mask losses (uncertainty-sampled),
    # 12544 = 112 x 112 (--train_num_points).
    loss.TRAIN_NUM_POINTS = 12544
    # Uniform candidates per point before the uncertainty selection (--oversample_ratio, >= 1).
    loss.OVERSAMPLE_RATIO = 3.0
    # Share of the points picked as the most uncertain candidates (smallest |logit|), the rest
    # drawn uniformly (--importance_sample_ratio, in [0, 1]).
    loss.IMPORTANCE_SAMPLE_RATIO = 0.75
    # Supervise every earlier decoder layer's prediction too, with its own matching and the same
    # weights (--deep_supervision, on in the original: it cannot be switched off there).
    loss.DEEP_SUPERVISION = True

    # In-context training samples (diffews/data/incontext; original sine/data/dataset.py).
    cfg.INPUT.SINE_TRAIN = CN()
    # Working size: images are scaled into and cropped to IMAGE_SIZE x IMAGE_SIZE, then zero-padded
    # to it (--image_size 896).
    cfg.INPUT.SINE_TRAIN.IMAGE_SIZE = 896
    # Large-scale jitter: the image fits into IMAGE_SIZE x s, s ~ U(MIN_SCALE, MAX_SCALE)
    # (--min_scale 0.1, --max_scale 2.0), then a random IMAGE_SIZE crop.
    cfg.INPUT.SINE_TRAIN.MIN_SCALE = 0.1
    cfg.INPUT.SINE_TRAIN.MAX_SCALE = 2.0
    # "horizontal" | "vertical" | "none" flip with probability 0.5 (--random_flip).
    cfg.INPUT.SINE_TRAIN.RANDOM_FLIP = "horizontal"
    # Probability that the target is the reference image itself, augmented independently
    # (otherwise another image with the drawn class) (--crop_ratio 0.5).
    cfg.INPUT.SINE_TRAIN.CROP_RATIO = 0.5
    cfg.DATASETS.SINE_TRAIN = CN()
    # Weights of the two tasks, (panoptic, instance) (--sample_rate "2,5").
    cfg.DATASETS.SINE_TRAIN.TASK_WEIGHTS = (2.0, 5.0)
    # Panoptic sources and their weights (--pano_seg_data "coco||ade20k", --pano_sample_rate "1,1").
    cfg.DATASETS.SINE_TRAIN.PANOPTIC = ("sine_coco_panoptic_train", "sine_ade20k_panoptic_train")
    cfg.DATASETS.SINE_TRAIN.PANOPTIC_WEIGHTS = (1.0, 1.0)
    # Instance sources and weights (--ins_seg_data "coco||o365", --ins_sample_rate "1,3"); others:
    # sine_ade20k_instance_train, sine_paco_lvis_train, sine_o365_sam_train_75k.
    cfg.DATASETS.SINE_TRAIN.INSTANCE = ("sine_coco_instance_train", "sine_o365_sam_train")
    cfg.DATASETS.SINE_TRAIN.INSTANCE_WEIGHTS = (1.0, 3.0)
    # SINE's optimizer groups (diffews/engine/solver.py, aim-uofa/SINE tools/train.py l.234-282):
    # weight decay of nn.Embedding parameters (the queries), 0 in the original; torch's norm
    # layers take detectron2's SOLVER.WEIGHT_DECAY_NORM (0.0), everything else SOLVER.WEIGHT_DECAY.
    cfg.SOLVER.WEIGHT_DECAY_EMBED = 0.0
