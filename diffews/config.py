# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""All DiffewS config keys, with their defaults (the paper's main setting) and what each means."""

from detectron2.config import CfgNode as CN


def add_diffews_config(cfg: CN) -> None:
    """Add every DiffewS key to a detectron2 config, in place.

    Defaults reproduce the paper's main setting (SD 2.1, 512 px, t=1, relative threshold 0.25,
    COCO-20i training recipe). YAML files only override these.
    """
    cfg.MODEL.META_ARCHITECTURE = "DiffewS"
    # MODEL.WEIGHTS (detectron2's own key) may name a checkpoint written by our trainer (.pth) or a
    # released DiffewS UNet in diffusers layout: `<name>/`, `<name>/unet/` or `<name>/unet/unet/`.

    cfg.MODEL.DIFFEWS = CN()
    # Local Stable Diffusion folder in diffusers layout, with unet/ vae/ text_encoder/ tokenizer/.
    # The UNet architecture is whatever unet/config.json says (SD 2.1 for real use, tiny in tests).
    cfg.MODEL.DIFFEWS.PRETRAINED = ""
    # Diffusion timestep fed to both UNet passes (the method is a one-step regressor at t=1).
    cfg.MODEL.DIFFEWS.TIMESTEP = 1
    # Mask = mean over RGB of the decoded prediction > REL_THRESHOLD * max of the prediction.
    cfg.MODEL.DIFFEWS.REL_THRESHOLD = 0.25
    # If > 0, replaces the relative threshold by an absolute one on [0, 1] (reference `--threshold`).
    cfg.MODEL.DIFFEWS.ABS_THRESHOLD = 0.0
    # Training uses the empty prompt padded to the tokenizer's full length (77 tokens for SD 2.1),
    # inference the unpadded [BOS, EOS] (2 tokens), as the reference code does. False uses 2 in both.
    cfg.MODEL.DIFFEWS.PAD_PROMPT_IN_TRAINING = True
    # Recompute UNet activations in the backward pass (diffusers gradient checkpointing): lets
    # SD 2.1 train at 512 px on a 24 GB GPU at the cost of about one extra forward.
    cfg.MODEL.DIFFEWS.GRADIENT_CHECKPOINTING = False
    # Inference keeps the latents of this many supports (keyed by their pixels) for later episodes
    # that reuse them: the VAE is frozen, so the result is identical. 0 disables.
    cfg.MODEL.DIFFEWS.SUPPORT_CACHE_SIZE = 256
    # Inference (run_fss.py, train_net.py --eval-only, demo.py, DiffewSPredictor) refuses to run
    # with MODEL.WEIGHTS empty: the UNet would be plain Stable Diffusion, never trained to
    # segment, and its numbers would look plausible. True runs that untrained model on purpose.
    cfg.MODEL.DIFFEWS.ALLOW_UNTRAINED = False

    # Square working size: images are resized (bilinear) and masks (nearest) to IMAGE_SIZE^2.
    cfg.INPUT.IMAGE_SIZE = 512
    cfg.INPUT.FORMAT = "RGB"
    cfg.INPUT.FEW_SHOT = CN()
    # Training episodes draw K uniformly from 1..MAX_SHOT supports per iteration (METHOD.md 4).
    cfg.INPUT.FEW_SHOT.MAX_SHOT = 2

    # Training recipe of the reference (METHOD.md 4): AdamW, lr 1e-5 decayed linearly to 1e-7 over
    # 20k updates of 1 episode x 4 accumulation steps, grad-norm clip 1.0, fp16 AMP (set in YAML).
    cfg.SOLVER.OPTIMIZER = "ADAMW"  # only ADAMW
    cfg.SOLVER.BASE_LR = 1e-5
    cfg.SOLVER.BETAS = (0.9, 0.999)
    cfg.SOLVER.EPS = 1e-8
    cfg.SOLVER.WEIGHT_DECAY = 0.01
    # lr = (BASE_LR - END_LR) * (1 - iter / MAX_ITER) ** POLY_LR_POWER + END_LR
    cfg.SOLVER.END_LR = 1e-7
    cfg.SOLVER.POLY_LR_POWER = 1.0
    cfg.SOLVER.WARMUP_ITERS = 0
    cfg.SOLVER.MAX_ITER = 20000
    # episodes per batch, summed over all processes (the reference: 1)
    cfg.SOLVER.IMS_PER_BATCH = 1
    # batches whose gradients are averaged into one update; one iteration = one update
    cfg.SOLVER.ACCUMULATION_STEPS = 4
    cfg.SOLVER.CHECKPOINT_PERIOD = 2000
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "norm"  # only "norm" (total L2 norm)
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 1.0
    # AMP autocast dtype when SOLVER.AMP.ENABLED: "float16" (with a grad scaler) or "bfloat16"
    cfg.SOLVER.AMP.PRECISION = "float16"
    # Allow TF32 matmuls on Ampere+ GPUs while training (the reference's --allow_tf32)
    cfg.SOLVER.ALLOW_TF32 = True
    # On a NaN or infinite loss: "raise" stops with the iteration number; "skip" drops the update
    # and counts it (scalar `skipped_updates`)
    cfg.SOLVER.NAN_POLICY = "raise"
    cfg.SEED = 42

    cfg.TEST.FSS = CN()
    # Number of supports per test episode (K).
    cfg.TEST.FSS.SHOT = 1
    # Seed of the episode generator (the field's protocol uses 0).
    cfg.TEST.FSS.SEED = 0
    # Optional JSON episode file (written by tools/make_episodes.py) to reuse instead of generating.
    cfg.TEST.FSS.EPISODES_FILE = ""
    # Number of episodes; 0 means the benchmark's protocol count (1000 COCO/PASCAL, ...).
    cfg.TEST.FSS.NUM_EPISODES = 0
    # Score at the query's original resolution instead of the working size (published protocol).
    cfg.TEST.FSS.ORIGINAL_SIZE = False
    # Episodes shown in TensorBoard every VIS_PERIOD iterations (the first ones of DATASETS.TEST[0]).
    cfg.TEST.FSS.VIS_EPISODES = 4


def load_config(config_file: str, opts=()) -> CN:
    """detectron2's defaults plus every DiffewS key, then ``config_file``, then ``opts``
    (``[KEY, VALUE, ...]``). Returned unfrozen."""
    from detectron2.config import get_cfg

    cfg = get_cfg()
    add_diffews_config(cfg)
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    return cfg
