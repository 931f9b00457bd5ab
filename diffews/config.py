# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""All DiffewS config keys, with their defaults (the paper's main setting) and what each means."""

from typing import Sequence

from detectron2.config import CfgNode as CN

from .sine_config import add_sine_config


def add_diffews_config(cfg: CN) -> None:
    """Add every DiffewS key to a detectron2 config, in place.

    Defaults reproduce the paper's main setting (SD 2.1, 512 px, t=1, relative threshold 0.25,
    COCO-20i training recipe). YAML files only override these.
    """
    cfg.MODEL.META_ARCHITECTURE = "DiffewS"
    # MODEL.WEIGHTS (detectron2's own key) may name a checkpoint written by our trainer (.pth) or a
    # released DiffewS UNet in diffusers layout: `<name>/`, `<name>/unet/` or `<name>/unet/unet/`.
    # Both MODEL.WEIGHTS and MODEL.DIFFEWS.PRETRAINED also take a hub id,
    # `hf://ORG/NAME[/SUB][@REV]` or `modelscope://ORG/NAME[/SUB]` (diffews/utils/hub.py,
    # MODEL_ZOO.md); build_config resolves it.

    cfg.MODEL.DIFFEWS = CN()
    # Local Stable Diffusion folder in diffusers layout, with unet/ vae/ text_encoder/ tokenizer/.
    # The UNet architecture is whatever unet/config.json says (SD 2.1 for real use, tiny in tests).
    cfg.MODEL.DIFFEWS.PRETRAINED = ""
    # Diffusion timestep fed to both UNet passes (the method is a one-step regressor at t=1).
    cfg.MODEL.DIFFEWS.TIMESTEP = 1
    # Mask = mean over RGB of the decoded prediction > REL_THRESHOLD * max of the prediction.
    cfg.MODEL.DIFFEWS.REL_THRESHOLD = 0.25
    # If > 0, replaces the relative threshold by an absolute one on [0, 1] (reference
    # `--threshold`).
    cfg.MODEL.DIFFEWS.ABS_THRESHOLD = 0.0
    # Training uses the empty prompt padded to the tokenizer's full length (77 tokens for SD 2.1),
    # inference the unpadded [BOS, EOS] (2 tokens), as the reference code does. False uses 2 in
    # both.
    cfg.MODEL.DIFFEWS.PAD_PROMPT_IN_TRAINING = True
    # Recompute UNet activations in the backward pass (diffusers gradient checkpointing): lets
    # SD 2.1 train at 512 px on a 24 GB GPU at the cost of about one extra forward.
    cfg.MODEL.DIFFEWS.GRADIENT_CHECKPOINTING = False
    # Benchmark episodes (DiffewS.forward at inference) keep the VAE latents of this many supports
    # (keyed by a hash of image and mask pixels) for later episodes that reuse them (FSS-1000 draws
    # supports from 10 images per class). Results are identical bit for bit with or without it:
    # every support image and mask is VAE-encoded in its own call either way, so a latent never
    # depends on which other supports were encoded with it. 0 disables.
    cfg.MODEL.DIFFEWS.SUPPORT_CACHE_SIZE = 256
    # Supports run through the UNet together in one support pass at inference (the reference runs
    # an episode's K supports at once). 1 runs each alone, so that a support's keys/values are
    # the same bit for bit whichever supports it is encoded with (slower for K > 1).
    cfg.MODEL.DIFFEWS.SUPPORT_PASS_BATCH = 8
    # Keep the frozen VAE in channels-last memory format: its convolutions run 7-15% faster on
    # CPUs (tools/BENCHMARKS.md); the same function up to float rounding (masks agree > 99.9%).
    cfg.MODEL.DIFFEWS.VAE_CHANNELS_LAST = True
    # Inference precision of the UNet and VAE weights: "float32" (the reference, and the
    # published numbers), "float16" or "bfloat16" (both), "bfloat16_vae" (the VAE only). bf16 is
    # also a CPU speed mode where the CPU has bf16 kernels (avx512_bf16: the VAE about 2x);
    # masks then differ from fp32 by the share tools/BENCHMARKS.md records. Inference only:
    # training is fp32 with SOLVER.AMP.
    cfg.MODEL.DIFFEWS.INFERENCE_DTYPE = "float32"
    # torch.compile the VAE encoder and decoder for inference (the UNet stays eager: its KV bank
    # makes dynamo recompile per layer). The first call of each shape compiles;
    # tools/benchmark.py reports the compile time apart. Inference only.
    cfg.MODEL.DIFFEWS.COMPILE = False
    # Inference (run_fss.py, train_net.py --eval-only, demo.py, DiffewSPredictor) refuses to run
    # with MODEL.WEIGHTS empty: the UNet would be plain Stable Diffusion, never trained to
    # segment, and its numbers would look plausible. True runs that untrained model on purpose.
    cfg.MODEL.DIFFEWS.ALLOW_UNTRAINED = False
    # Presence (is the support's object in the query at all?): the signal read from each
    # prediction, higher = more likely present (diffews/modeling/readout.py: "score", "peak" or
    # "attention"; tools/BENCHMARKS.md has their AUROC), and the threshold below which a query is
    # judged absent (empty mask, result "present" False). < 0 = no decision: every mask is the
    # relative threshold's, as the published FSS protocols assume (the object is present).
    # tools/calibrate_presence.py measures the threshold on the training classes.
    cfg.MODEL.DIFFEWS.PRESENCE_SIGNAL = "score"
    cfg.MODEL.DIFFEWS.PRESENCE_THRESHOLD = -1.0
    # Weights calibrated for presence (the quick start's model_final.pth, or a checkpoint written
    # by tools/calibrate_presence.py --write-weights) carry a signal and threshold. With
    # PRESENCE_THRESHOLD < 0, True makes their signal the reported "presence" everywhere and
    # lets DiffewSPredictor (FSIS, VOS, autolabel, web demo) decide with their threshold; the
    # FSS benchmark protocols (run_fss.py, train_net.py) never decide unless PRESENCE_THRESHOLD
    # asks. False ignores what the weights carry. Released weights carry nothing.
    cfg.MODEL.DIFFEWS.PRESENCE_FROM_WEIGHTS = True
    # Absent-target training episodes (INPUT.FEW_SHOT.NEGATIVE_RATIO) train the UNet towards the
    # empty mask's latent, so that it decodes "not here" dark (the "peak" signal reads it;
    # issue 28 design (a)). False: they train only the presence head below (design (b)).
    cfg.MODEL.DIFFEWS.ABSENT_MASK_LOSS = True
    # A learned presence head (diffews/modeling/presence_head.py; issue 28 design (b)): a small
    # MLP on the query pass's attention to the supports' (foreground) keys in every fused layer
    # and its pooled mid-block attention output, trained with a binary cross-entropy on present
    # and absent-target episodes. Its probability is the "head" presence signal. Off: the
    # published model, unchanged. Weights trained with a head bring it whatever ENABLED says.
    cfg.MODEL.DIFFEWS.PRESENCE_HEAD = CN()
    cfg.MODEL.DIFFEWS.PRESENCE_HEAD.ENABLED = False
    # width of the head's hidden layer
    cfg.MODEL.DIFFEWS.PRESENCE_HEAD.HIDDEN = 64
    # also read, per fused layer, the cosine similarity of the query's keys to the supports'
    # foreground prototype (their foreground-weighted mean key; presence_head.py)
    cfg.MODEL.DIFFEWS.PRESENCE_HEAD.PROTOTYPE = False
    # weight of its loss ("loss_presence") beside the mask loss
    cfg.MODEL.DIFFEWS.PRESENCE_HEAD.LOSS_WEIGHT = 1.0
    # True: freeze the UNet and train the head only, on top of MODEL.WEIGHTS (e.g. a released
    # fold: configs/fss/coco20i/diffews_sd21_coco20i_fold0_presence_head.yaml)
    cfg.MODEL.DIFFEWS.PRESENCE_HEAD.TRAIN_ONLY = False
    # Inference runtime of each part (VAE encoder, VAE decoder, support pass, query pass):
    # "auto" (default) times torch and ONNX Runtime on each part at the working size on first
    # use, interleaved, and runs each part in the faster one (diffews/modeling/onnx/auto.py; the
    # choice is kept per host beside the exports, onnx/auto/); "torch" or "onnxruntime" force one
    # for every part. ONNX Runtime runs the parts as ONNX graphs (diffews/modeling/onnx);
    # training, posterior sampling and the "attention" presence signal stay in torch. The graphs
    # are exported once when the weights load and kept in ONNX_CACHE_DIR (empty: an onnx/ folder
    # beside MODEL.WEIGHTS, or beside MODEL.DIFFEWS.PRETRAINED when untrained), keyed by model
    # and INPUT.IMAGE_SIZE; a stale export is rebuilt. "onnxruntime" needs float32
    # (INFERENCE_DTYPE) and COMPILE False; "auto" runs torch everywhere with either set, or
    # without onnx/onnxruntime installed. Masks agree with torch's (>= 99.9% of the pixels of
    # every episode; tools/BENCHMARKS.md).
    cfg.MODEL.DIFFEWS.BACKEND = "auto"
    # BACKEND auto: a part of fewer GFLOPs per call (torch's FLOP counter, at the working size)
    # stays torch without an export or a timing: the export costs tens of seconds for a real
    # model, and a part this small (a few ms) cannot pay it back. 0 measures every part.
    cfg.MODEL.DIFFEWS.AUTO_MIN_PART_GFLOP = 1.0
    # ONNX Runtime execution providers in order of preference; empty: CPUExecutionProvider on a
    # CPU device, CUDAExecutionProvider on a GPU (e.g. TensorrtExecutionProvider,
    # CUDAExecutionProvider for TensorRT first).
    cfg.MODEL.DIFFEWS.ONNX_PROVIDERS = ()
    cfg.MODEL.DIFFEWS.ONNX_CACHE_DIR = ""
    # ONNX Runtime intra-op threads (0: torch's thread count, so both runtimes use the same
    # cores) and graph optimisation level ("all", "extended", "basic", "disable";
    # tools/BENCHMARKS.md has the measured levels).
    cfg.MODEL.DIFFEWS.ONNX_THREADS = 0
    cfg.MODEL.DIFFEWS.ONNX_OPTIMIZATION = "all"

    # Square working size: images are resized (bilinear) and masks (nearest) to IMAGE_SIZE^2.
    cfg.INPUT.IMAGE_SIZE = 512
    cfg.INPUT.FEW_SHOT = CN()
    # Training episodes draw K uniformly from 1..MAX_SHOT supports per iteration (docs/METHOD.md
    # section 4).
    cfg.INPUT.FEW_SHOT.MAX_SHOT = 2
    # Fraction of training episodes whose query is an image without the episode's class
    # (absent-target episodes; data/episodes/train.py): their target is the empty mask. They
    # teach the model to say "not here" (MODEL.DIFFEWS.ABSENT_MASK_LOSS, PRESENCE_HEAD).
    # 0 = the published training stream, unchanged.
    cfg.INPUT.FEW_SHOT.NEGATIVE_RATIO = 0.0

    # Sampling weight of each DATASETS.TRAIN dataset (same length, >= 0, normalised): each training
    # episode draws its dataset with these probabilities, then a class, query and supports in it.
    # Empty = uniform over the datasets. Example: configs/incontext/diffews_sd21_incontext.yaml.
    cfg.DATASETS.TRAIN_WEIGHTS = ()
    # Your own datasets (diffews/data/datasets/custom.py), registered by build_config: one entry per
    # dataset, `<name>: {LAYOUT: coco|semseg|folder, ROOT: DIR, ...}`, registering <name>_train and
    # <name>_test. Keys: LAYOUT, ROOT, COCO_JSON (coco), CLASS_NAMES (semseg: file or list),
    # IMAGE_DIR, LABEL_DIR, TRAIN_CLASSES / TEST_CLASSES (names or indices; default all classes in
    # both), SHOT (test shot filter, 0 = TEST.FSS.SHOT), LABEL_OFFSET (semseg: class = value -
    # offset, default 1), IGNORE_LABEL (255), MIN_PIXELS (1), NUM_EPISODES (test, default 1000).
    # Examples: configs/custom/.
    cfg.DATASETS.CUSTOM = CN(new_allowed=True)

    # Training recipe of the reference (docs/METHOD.md section 4): AdamW, lr 1e-5 decayed linearly
    # to 1e-7 over 20k updates of 1 episode x 4 accumulation steps, grad-norm clip 1.0, fp16 AMP
    # (set in YAML).
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

    # Bad data (a missing or unreadable image or label, a label of another size). False: training
    # and evaluation stop at the first one with an error naming the file. True: skip it (training
    # drops the image from its classes, evaluation drops the episode), count it and log it.
    cfg.DATALOADER.SKIP_BAD_SAMPLES = False
    # With SKIP_BAD_SAMPLES, stop once more than this fraction is bad: of the training images
    # (per data-loader worker), or of the test episodes (per process).
    cfg.DATALOADER.MAX_BAD_FRACTION = 0.01

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
    # Episodes per model call in evaluation (run_fss.py, train_net.py --eval-only). 1 is the
    # reference's batch; more batches the query encodes, query passes and decodes of episodes
    # with equal K (faster on GPUs; masks equal to batch 1 up to float rounding,
    # tools/BENCHMARKS.md).
    cfg.TEST.FSS.BATCH_SIZE = 1
    # Episodes shown in TensorBoard every VIS_PERIOD iterations (the first ones of
    # DATASETS.TEST[0]).
    cfg.TEST.FSS.VIS_EPISODES = 4
    # Absent-target episodes added per protocol episode (diffews/data/episodes/negatives.py): the
    # same class and supports with a query that does not hold the class, fixed by TEST.FSS.SEED. The
    # evaluator then also reports presence AUROC, precision, recall and the mIoU of the present
    # episodes. 0 = the published protocol, unchanged.
    cfg.TEST.FSS.NEGATIVE_RATIO = 0.0

    # Few-shot instance segmentation, TFA protocol (inference_fsod/, docs/METHOD.md section 7.2).
    # The support split and the test set follow from these keys (coco_fsod.fsod_dataset_names), not
    # DATASETS.
    cfg.TEST.FSOD = CN()
    # K support instances per novel class: 1, 2, 3, 5, 10 or 30 (SINE reports 1 and 5).
    cfg.TEST.FSOD.SHOT = 1
    # TFA split group 0..9 (0 = the earlier works' files in cocosplit/, 1..9 in cocosplit/seedS/).
    cfg.TEST.FSOD.SEED = 0
    # numpy seed of the K-of-more draw when a class file holds more than K instances (seed 0's
    # files); TFA draws from the global RNG, seeded by cfg.SEED (random when -1, as in its configs).
    cfg.TEST.FSOD.SAMPLE_SEED = 0
    # "coco": coco_test_novel (5k val2014 images); "voc": VOCSegm_val_novel (COCO-to-VOC).
    cfg.TEST.FSOD.TEST_SET = "coco"
    # Predicted mask -> instances (diffews/predictor/instances.py): "mask", "components" or
    # "mask+components" (components plus their union when there are several).
    cfg.TEST.FSOD.INSTANCE_MODE = "mask+components"
    # Connected components smaller than this many pixels (at the original image size) are dropped.
    cfg.TEST.FSOD.MIN_AREA = 16
    # Instances kept per image over all classes, by score (TFA/SINE: 100, no score threshold).
    cfg.TEST.FSOD.TOPK = 100
    # The evaluator's maximum detections per image, the AP definition (COCO: 100). Separate from
    # TOPK, so that keeping fewer or more instances never changes what AP means.
    cfg.TEST.FSOD.MAX_DETS = 100
    # Per-class confidence multiplying each instance's mean probability
    # (diffews/predictor/instances.py): "none" = 1 (score = mean probability over the instance),
    # "contrast" = the prediction's score (readout.prediction_score), "presence" = its presence
    # signal, "contrast*presence" both (tools/BENCHMARKS.md: AP of each on the synthetic tree).
    cfg.TEST.FSOD.CLASS_SCORE = "none"
    # Support sets (classes) per UNet query pass and VAE decode call for each test image.
    cfg.TEST.FSOD.BATCH_SIZE = 10
    # Folder of the saved support sets (<folder>/<split>/<class>.pt); "" = <output>/support_sets.
    # COCO and COCO-to-VOC runs of the same shot and seed use the same COCO supports: share it.
    cfg.TEST.FSOD.SUPPORT_DIR = ""

    # Semi-supervised video object segmentation (inference_vos/, diffews/tasks/vos/,
    # docs/METHOD.md section 7.3).
    cfg.TEST.VOS = CN()
    # Supports per object and frame, the fixed first annotated frame included (SINE's --num_frame):
    # 6 for DAVIS 2017 and YouTube-VOS, 2 for DAVIS 2016; 1 = the first frame only.
    cfg.TEST.VOS.MEM_SIZE = 6
    # A past frame's score decays linearly with its distance dt (frames) to the newest frame:
    # score * max(0, 1 - dt / DECAY_RATIO) (SINE --memory_decay_type linear --memory_decay_ratio
    # 20); 0 disables the decay.
    cfg.TEST.VOS.DECAY_RATIO = 20.0
    # True: a frame's support entry (mask latent + keys/values) is computed once, when it enters
    # an object's memory. False re-encodes every support from pixels on every frame (same masks,
    # slower; only for measuring what the reuse saves).
    cfg.TEST.VOS.REUSE_SUPPORTS = True
    # Objects of a frame whose support sets have the same size share a query pass, up to this many.
    cfg.TEST.VOS.BATCH_SIZE = 8


def build_config(config_file: str = "", opts: Sequence = ()) -> CN:
    """The one config builder: detectron2's defaults plus every key of ours, then
    ``config_file`` (if given), then ``opts`` (``[KEY, VALUE, ...]``). Hub ids in
    ``MODEL.WEIGHTS`` / ``MODEL.DIFFEWS.PRETRAINED`` become local folders here, once
    (``diffews.utils.hub``; a ``MODEL.WEIGHTS`` with ``{fold}`` waits for ``fold_weights``), and
    the ``DATASETS.CUSTOM`` datasets are registered. Returned unfrozen."""
    from detectron2.config import get_cfg

    from .utils.hub import resolve_config_paths

    cfg = get_cfg()
    add_diffews_config(cfg)
    add_sine_config(cfg)
    if config_file:
        cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    resolve_config_paths(cfg)
    if cfg.DATASETS.CUSTOM:
        from .data.datasets.custom import register_custom_from_config

        register_custom_from_config(cfg)
    return cfg


def fold_weights(cfg, fold: int) -> str:
    """``MODEL.WEIGHTS`` of a fold: ``{fold}`` replaced, a hub id made a local folder."""
    from .utils.hub import resolve_hub_path

    return resolve_hub_path(cfg.MODEL.WEIGHTS.replace("{fold}", str(fold)), "MODEL.WEIGHTS")
