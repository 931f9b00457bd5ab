# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""DiffewSTrainer: detectron2's DefaultTrainer with DiffewS's data, solver and train loop; the
same trainer trains SINE (``MODEL.META_ARCHITECTURE: "SINE"``): the in-context train loader, the
original's optimizer groups and schedule (``solver.py``) and checkpoints without the frozen
encoder (``sine_checkpoint.py``)."""

import logging
import weakref
from collections import OrderedDict

import torch

from detectron2.engine import DefaultTrainer, TrainerBase
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from torch.nn.parallel import DistributedDataParallel

from ..checkpoint import DiffewSCheckpointer
from ..data.episodes import build_episodic_train_loader, build_fss_test_loader
from ..data.incontext import build_incontext_train_loader
from ..evaluation import FSSEvaluator, evaluate_episodes
from .hooks import PredictionVisualizer
from .sine_checkpoint import SINECheckpointer
from .solver import build_lr_scheduler, build_optimizer
from .train_loop import EpisodeTrainer

logger = logging.getLogger(__name__)


def is_sine(cfg) -> bool:
    return cfg.MODEL.META_ARCHITECTURE == "SINE"


def create_ddp_model(model):
    """DDP on CPU (gloo) or GPU (NCCL); detectron2's helper assumes a GPU."""
    if comm.get_world_size() == 1:
        return model
    kwargs = {"device_ids": [comm.get_local_rank()]} if next(model.parameters()).is_cuda else {}
    return DistributedDataParallel(model, broadcast_buffers=False, **kwargs)


class DiffewSTrainer(DefaultTrainer):
    """Episodic training of DiffewS (docs/METHOD.md section 4).

    One iteration is one optimizer update over ``SOLVER.ACCUMULATION_STEPS`` batches of
    ``SOLVER.IMS_PER_BATCH`` episodes (summed over processes), under AMP if ``SOLVER.AMP.ENABLED``
    (``SOLVER.AMP.PRECISION``), with gradient-norm clipping and the NaN policy of
    ``SOLVER.NAN_POLICY``. Checkpoints hold the UNet, optimizer, LR scheduler, grad scaler and
    iteration, so ``--resume`` continues at the same iteration and learning rate.

    SINE (docs/SINE.md section 12): one iteration is one update over ``ACCUMULATION_STEPS``
    batches of in-context samples; checkpoints hold the neck, the decoder and the loss buffer,
    not the frozen DINOv2 (``sine_checkpoint.py``).
    """

    def __init__(self, cfg):
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        torch.backends.cuda.matmul.allow_tf32 = cfg.SOLVER.ALLOW_TF32
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        model = create_ddp_model(model)
        clip = cfg.SOLVER.CLIP_GRADIENTS
        if clip.ENABLED and clip.CLIP_TYPE != "norm":
            raise ValueError(
                f"SOLVER.CLIP_GRADIENTS.CLIP_TYPE: only 'norm' is supported, got {clip.CLIP_TYPE!r}"
            )
        self._trainer = EpisodeTrainer(
            model, data_loader, optimizer,
            accumulation_steps=cfg.SOLVER.ACCUMULATION_STEPS,
            amp=cfg.SOLVER.AMP.PRECISION if cfg.SOLVER.AMP.ENABLED else None,
            clip_norm=clip.CLIP_VALUE if clip.ENABLED else 0.0,
            nan_policy=cfg.SOLVER.NAN_POLICY,
        )
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        checkpointer = SINECheckpointer if is_sine(cfg) else DiffewSCheckpointer
        self.checkpointer = checkpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    def resume_or_load(self, resume: bool = True):
        """detectron2's, then (SINE) the encoder record of this run's checkpoints."""
        super().resume_or_load(resume=resume)
        if isinstance(self.checkpointer, SINECheckpointer):
            self.checkpointer.settle_encoder()

    def build_hooks(self):
        ret = super().build_hooks()
        if comm.is_main_process() and self.cfg.VIS_PERIOD > 0 and self.cfg.DATASETS.TEST:
            loader = self.build_test_loader(self.cfg, self.cfg.DATASETS.TEST[0])
            episodes = []
            for batch in loader:
                episodes.extend(batch)
                if len(episodes) >= self.cfg.TEST.FSS.VIS_EPISODES:
                    break
            # before the writer, so that the grid is written in the same step
            ret.insert(
                len(ret) - 1, PredictionVisualizer(self.cfg.VIS_PERIOD, episodes, self.model)
            )
        return ret

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_optimizer(cfg, model)

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        return build_lr_scheduler(cfg, optimizer)

    @classmethod
    def build_train_loader(cls, cfg):
        """By ``MODEL.META_ARCHITECTURE``: SINE's in-context samples
        (``DATASETS.SINE_TRAIN``), DiffewS's episodes (``DATASETS.TRAIN``)."""
        if is_sine(cfg):
            return build_incontext_train_loader(cfg)
        return build_episodic_train_loader(cfg)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return build_fss_test_loader(cfg, dataset_name)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return FSSEvaluator(
            dataset_name,
            distributed=True,
            output_dir=output_folder or cfg.OUTPUT_DIR,
            original_size=cfg.TEST.FSS.ORIGINAL_SIZE,
        )

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """Evaluate ``model`` on every ``DATASETS.TEST`` set with the one FSS evaluation loop
        (``evaluation/fss_loop.py``), as detectron2's ``DefaultTrainer.test`` does with
        ``inference_on_dataset``: ``{dataset: {"fss": {...}}}``, or the one dataset's dict."""
        from detectron2.evaluation import inference_context, print_csv_format

        results = OrderedDict()
        for idx, name in enumerate(cfg.DATASETS.TEST):
            loader = cls.build_test_loader(cfg, name)
            evaluator = evaluators[idx] if evaluators else cls.build_evaluator(cfg, name)
            with inference_context(model):
                results[name] = evaluate_episodes(model, loader, evaluator, desc=name)
            if comm.is_main_process():
                logger.info("Evaluation results for %s in csv format:", name)
                print_csv_format(results[name])
        return list(results.values())[0] if len(results) == 1 else results
