# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Loading MODEL.WEIGHTS: our trainer's checkpoints and the released DiffewS UNets.

``DiffewSCheckpointer`` is detectron2's ``DetectionCheckpointer`` with three changes:

- a directory is read as a released DiffewS UNet in diffusers layout (``<name>/``, ``<name>/unet/``
  or ``<name>/unet/unet/``; docs/METHOD.md section 8);
- loading is strict: a missing key or a shape mismatch stops with an error naming the file, the key
  and both shapes, instead of detectron2's warning-and-skip; a corrupt or truncated file stops
  with an error naming it;
- saving is atomic (a temporary file renamed), so a run killed while saving never leaves a
  half-written ``model_*.pth`` or ``last_checkpoint`` that ``--resume`` would read.

Presence (issue 28): a model with a presence head saves its hyper-parameters under
"presence_head" (``DiffewS.from_config`` builds the head for such weights); weights without the
head's keys (a released UNet, an older checkpoint) load with the head left at its
initialisation (a warning says so: train it first). A checkpoint may carry a presence
calibration under "presence" (``{"signal", "threshold", ...}``, ``write_presence_calibration``),
which loading hands to ``DiffewS.adopt_presence_calibration``.
"""

import logging
import os

import torch
from detectron2.checkpoint import DetectionCheckpointer

from .modeling.unet import check_shape, load_release_state_dict
from .utils.atomic import atomic_open

logger = logging.getLogger(__name__)


UNTRAINED_MESSAGE = (
    "MODEL.WEIGHTS is empty: inference would run a DiffewS that was never trained; set "
    "MODEL.WEIGHTS to a trained checkpoint (.pth) or a released UNet folder (e.g. "
    "weight/coco_fold0), or set MODEL.DIFFEWS.ALLOW_UNTRAINED True to run it untrained on purpose"
)


SINE_UNTRAINED_MESSAGE = (
    "MODEL.WEIGHTS is empty: inference would run a SINE whose decoder was never trained; set "
    "MODEL.WEIGHTS to the released pytorch_model.bin or a trained checkpoint (.pth), or set "
    "MODEL.SINE.ALLOW_UNTRAINED True to run it untrained on purpose"
)


class UntrainedModelError(ValueError):
    """Inference was asked for with ``MODEL.WEIGHTS`` empty and no explicit permission."""


def _is_sine(cfg) -> bool:
    return cfg.MODEL.META_ARCHITECTURE == "SINE"


def require_inference_weights(cfg) -> None:
    """Raise ``UntrainedModelError`` if ``MODEL.WEIGHTS`` is empty and
    ``MODEL.DIFFEWS.ALLOW_UNTRAINED`` (``MODEL.SINE.ALLOW_UNTRAINED`` for a SINE config) is not
    set: call it before building the model, so that the error comes before minutes of loading."""
    if _is_sine(cfg):
        if not cfg.MODEL.WEIGHTS and not cfg.MODEL.SINE.ALLOW_UNTRAINED:
            raise UntrainedModelError(SINE_UNTRAINED_MESSAGE)
        return
    if not cfg.MODEL.WEIGHTS and not cfg.MODEL.DIFFEWS.ALLOW_UNTRAINED:
        raise UntrainedModelError(UNTRAINED_MESSAGE)


def load_inference_weights(model, cfg) -> str:
    """Load ``cfg.MODEL.WEIGHTS`` into ``model`` for inference; returns what was loaded.

    With ``MODEL.WEIGHTS`` empty this raises ``UntrainedModelError`` (the model would be an
    untrained segmenter giving plausible-looking numbers) unless
    ``MODEL.DIFFEWS.ALLOW_UNTRAINED`` is True, in which case it logs a warning and returns "".
    """
    if _is_sine(cfg):
        return load_sine_inference_weights(model, cfg)
    weights = cfg.MODEL.WEIGHTS
    if not weights:
        if not cfg.MODEL.DIFFEWS.ALLOW_UNTRAINED:
            raise UntrainedModelError(UNTRAINED_MESSAGE)
        logger.warning("MODEL.WEIGHTS is empty and MODEL.DIFFEWS.ALLOW_UNTRAINED is set: running "
                       "an untrained DiffewS (plain Stable Diffusion UNet)")
        attach_inference_backend(model, cfg, "")
        return ""
    DiffewSCheckpointer(model).load(weights)
    attach_inference_backend(model, cfg, weights)
    return weights


def load_sine_inference_weights(model, cfg) -> str:
    """``MODEL.WEIGHTS`` into a SINE model (``modeling.sine.weights.load_sine_weights``: the
    released pytorch_model.bin, our checkpoints; without encoder keys when
    ``MODEL.SINE.ENCODER.WEIGHTS`` gave the encoder at build time); returns what was loaded."""
    from .modeling.sine.weights import load_sine_weights

    require_inference_weights(cfg)
    if not cfg.MODEL.WEIGHTS:
        logger.warning("MODEL.WEIGHTS is empty and MODEL.SINE.ALLOW_UNTRAINED is set: running "
                       "SINE with an untrained decoder")
        return ""
    load_sine_weights(model, cfg.MODEL.WEIGHTS, encoder_loaded=bool(cfg.MODEL.SINE.ENCODER.WEIGHTS))
    return cfg.MODEL.WEIGHTS


def attach_inference_backend(model, cfg, weights: str = "") -> None:
    """``MODEL.DIFFEWS.BACKEND`` on a model whose weights are loaded (an ONNX export depends on
    them): "onnxruntime" exports it (or finds its cached export beside ``weights``) and attaches
    the backend; "torch" detaches any earlier one (weights loaded again, e.g. another fold)."""
    if not hasattr(model, "use_backend"):
        return
    from .modeling.onnx.attach import backend_from_config

    model.use_backend(backend_from_config(model, cfg, weights))


HEAD_PREFIX = "presence_head."


def write_presence_calibration(path: str, calibration: dict, output: str = "") -> str:
    """Copy the trainer checkpoint ``path`` to ``output`` (default: in place, atomically) with
    ``calibration`` (``{"signal", "threshold", ...}``) as its "presence" entry."""
    if not os.path.isfile(path) or not path.endswith(".pth"):
        raise ValueError(f"{path}: a presence calibration is written into a trainer checkpoint "
                         "(.pth)")
    state = torch.load(path, map_location="cpu", weights_only=False)
    state["presence"] = dict(calibration)
    output = output or path
    with atomic_open(output, "wb") as f:
        torch.save(state, f)
    return output


class DiffewSCheckpointer(DetectionCheckpointer):
    def load(self, path: str, *args, **kwargs):
        if path and not os.path.exists(path):
            raise FileNotFoundError(
                f"MODEL.WEIGHTS: {path} does not exist (expected a trainer checkpoint .pth or a "
                "released DiffewS UNet folder)"
            )
        if path and os.path.isfile(path) and path.endswith((".safetensors", ".json")):
            raise ValueError(
                f"MODEL.WEIGHTS: {path} is a weights file of a released UNet; give the folder "
                f"that holds it and its config.json ({os.path.dirname(path) or '.'})"
            )
        self._source = path
        if hasattr(self.model, "adopt_presence_calibration"):
            self.model.adopt_presence_calibration(None)  # until the weights say otherwise
        if path and os.path.isdir(path):
            unet_config = dict(self.model.unet.config) if hasattr(self.model, "unet") else None
            state = load_release_state_dict(path, unet_config)
            incompatible = self._load_model({"model": {"unet." + k: v for k, v in state.items()},
                                             "__author__": "DiffewS release"})
            if incompatible is not None:
                self._log_incompatible_keys(incompatible)
            return {}
        extra = super().load(path, *args, **kwargs)
        calibration = extra.pop("presence", None) if isinstance(extra, dict) else None
        if calibration is not None and hasattr(self.model, "adopt_presence_calibration"):
            self.model.adopt_presence_calibration(calibration)
            logger.info("%s carries a presence calibration: %s", path, calibration)
        return extra

    def _load_model(self, checkpoint):
        incoming = checkpoint["model"]
        if all(k.startswith("module.") for k in incoming):
            incoming = {k[len("module."):]: v for k, v in incoming.items()}
            checkpoint["model"] = incoming
        source = getattr(self, "_source", "checkpoint")
        expected = self.model.state_dict()
        head = [k for k in expected if k.startswith(HEAD_PREFIX) and k not in incoming]
        if head:  # a head to train on top of these weights (PRESENCE_HEAD.TRAIN_ONLY)
            logger.warning("%s has no presence head: it keeps its initialisation (an untrained "
                           "head's 'head' signal means nothing until it is trained)", source)
            for key in head:
                incoming[key] = expected[key]
        for key, value in expected.items():
            if key not in incoming:
                raise KeyError(f"{source}: missing key '{key}' (shape {tuple(value.shape)})")
            check_shape(key, value.shape, incoming[key].shape, source)
        unexpected = sorted(set(incoming) - set(expected))
        if unexpected and all(k.startswith(HEAD_PREFIX) for k in unexpected):
            raise KeyError(
                f"{source}: holds a presence head ('{unexpected[0]}', ...) that this model was "
                "built without: build the model from a config whose MODEL.WEIGHTS is this file "
                "(the head is then built to its shape), or set MODEL.DIFFEWS.PRESENCE_HEAD.ENABLED "
                "True"
            )
        if unexpected:
            raise KeyError(
                f"{source}: {len(unexpected)} unexpected key(s), e.g. '{unexpected[0]}': the "
                "checkpoint is not a DiffewS model"
            )
        incompatible = super()._load_model(checkpoint)
        # the frozen VAE is not checkpointed (DiffewS.state_dict): not "missing"
        return incompatible._replace(
            missing_keys=[k for k in incompatible.missing_keys if k in expected]
        )

    def _load_file(self, filename: str):
        try:
            return super()._load_file(filename)
        except Exception as e:  # zip, pickle and EOF errors of a truncated or corrupt file
            raise ValueError(
                f"{filename}: not a readable checkpoint ({type(e).__name__}: "
                f"{' '.join(str(e).split())[:200]}); the file is truncated or corrupt (a run "
                "killed while saving, a partial copy?): use another checkpoint"
            ) from e

    def save(self, name: str, **kwargs) -> None:
        """fvcore's ``Checkpointer.save``, written to a temporary file and renamed."""
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        model = getattr(self.model, "module", self.model)  # DDP
        if getattr(model, "presence_head", None) is not None:
            data["presence_head"] = dict(model.presence_head.hparams)
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info("Saving checkpoint to %s", save_file)
        with atomic_open(save_file, "wb") as f:
            torch.save(data, f)
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        with atomic_open(os.path.join(self.save_dir, "last_checkpoint"), "w") as f:
            f.write(last_filename_basename)
