# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""SINE training checkpoints: the frozen DINOv2 is left out, an encoder record is kept.

The released DINOv2-L encoder has 304M parameters (1.2 GB in float32) against about 19M
trainable ones (neck and Matching Transformer); it never changes during training, so writing it
into every periodic checkpoint would store the same 1.2 GB again and again. As DiffewS's
checkpoints leave its frozen VAE out (it comes from ``MODEL.DIFFEWS.PRETRAINED``), SINE's leave
``image_encoder.encoder.*`` out; it comes back from a file named by the checkpoint's **encoder
record** ``{"weights", "fingerprint"}`` (``modeling/sine/weights.py``):

* the encoder came from ``MODEL.SINE.ENCODER.WEIGHTS`` (the recipe: the official DINOv2
  checkpoint): the record names that file, nothing more is written;
* otherwise (a random encoder, as in the quick start and the tests, or one that came with
  ``MODEL.WEIGHTS``, e.g. fine-tuning the released ``pytorch_model.bin``): it is written ONCE
  per run to ``OUTPUT_DIR/sine_encoder.pth`` (official DINOv2 layout, loadable as
  ``MODEL.SINE.ENCODER.WEIGHTS``) and the record names it relative to the checkpoint.

Loading a checkpoint (``--resume``, ``MODEL.WEIGHTS`` for fine-tuning or inference) restores the
recorded encoder when the model's differs (fingerprints compared), so resume works whatever the
config's ``MODEL.SINE.ENCODER.WEIGHTS``. Files that do hold the encoder (the released one) load
it, as the original's whole-model load does; ``criterion.*`` (the loss's class weights) always
follow the config.
"""

import logging
import os

import torch
from detectron2.utils import comm

from ..checkpoint import DiffewSCheckpointer
from ..modeling.sine.weights import (ENCODER_PREFIX, IGNORED_PREFIXES, encoder_fingerprint,
                                     encoder_record, restore_encoder)
from ..utils.atomic import atomic_open

logger = logging.getLogger(__name__)

__all__ = ["SINECheckpointer", "ENCODER_FILE"]

ENCODER_FILE = "sine_encoder.pth"


class SINECheckpointer(DiffewSCheckpointer):
    """``DiffewSCheckpointer`` for a SINE model (module docstring): strict loading, atomic
    saving, the frozen encoder replaced by its record."""

    def __init__(self, model, save_dir: str = "", **checkpointables):
        super().__init__(model, save_dir, **checkpointables)
        self.encoder_record = None

    def settle_encoder(self) -> dict:
        """Fix the record the checkpoints of this run carry (called once the starting weights
        are loaded); writes ``OUTPUT_DIR/sine_encoder.pth`` when no file gives the encoder."""
        model = self.model
        source = getattr(model, "encoder_weights", "")
        if source:
            if os.path.abspath(os.path.dirname(source)) == os.path.abspath(self.save_dir):
                source = os.path.basename(source)  # beside the checkpoints: relative
            self.encoder_record = encoder_record(model, source)
            return self.encoder_record
        vit = model.image_encoder.encoder
        path = os.path.join(self.save_dir, ENCODER_FILE)
        fingerprint = encoder_fingerprint(vit)
        if comm.is_main_process() and self.save_to_disk:
            existing = None
            if os.path.isfile(path):
                from ..modeling.sine.weights import read_encoder_state

                existing = read_encoder_state(path, ENCODER_FILE)
            if existing is None or any(not torch.equal(v.cpu(), existing.get(k, v.new_empty(0)))
                                       for k, v in vit.state_dict().items()):
                with atomic_open(path, "wb") as f:
                    torch.save({k: v.cpu() for k, v in vit.state_dict().items()}, f)
                logger.info("Frozen encoder written once to %s (checkpoints leave it out)", path)
        comm.synchronize()
        model.encoder_weights = path
        self.encoder_record = {"weights": ENCODER_FILE, "fingerprint": fingerprint}
        return self.encoder_record

    def load(self, path: str, *args, **kwargs):
        if path and os.path.isdir(path):
            raise ValueError(f"MODEL.WEIGHTS: {path} is a folder; SINE takes a weights file (the "
                             "released pytorch_model.bin or a trainer checkpoint .pth)")
        self._folder = os.path.dirname(path) if path else ""
        return super().load(path, *args, **kwargs)

    def save(self, name: str, **kwargs) -> None:
        """Like ``DiffewSCheckpointer.save`` (atomic), without ``image_encoder.encoder.*`` and
        with the encoder record under ``"sine_encoder"``."""
        if not self.save_dir or not self.save_to_disk:
            return
        record = self.encoder_record or self.settle_encoder()
        data = {"model": {k: v for k, v in self.model.state_dict().items()
                          if not k.startswith(ENCODER_PREFIX)}, "sine_encoder": record}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        save_file = os.path.join(self.save_dir, f"{name}.pth")
        self.logger.info("Saving checkpoint to %s", save_file)
        with atomic_open(save_file, "wb") as f:
            torch.save(data, f)
        self.tag_last_checkpoint(f"{name}.pth")

    def _load_model(self, checkpoint):
        incoming = checkpoint["model"]
        if incoming and all(k.startswith("module.") for k in incoming):
            incoming = {k[len("module."):]: v for k, v in incoming.items()}
        source = getattr(self, "_source", "checkpoint")
        expected = self.model.state_dict()
        # the loss's class weights follow the config (the released file has [1, 0.1])
        incoming = {k: v for k, v in incoming.items() if not k.startswith(IGNORED_PREFIXES)}
        incoming.update({k: v for k, v in expected.items() if k.startswith(IGNORED_PREFIXES)})
        if any(k.startswith(ENCODER_PREFIX) for k in incoming):
            current = self.model.image_encoder.encoder.state_dict()
            if any(not torch.equal(current[k[len(ENCODER_PREFIX):]].cpu(), v.cpu())
                   for k, v in incoming.items() if k.startswith(ENCODER_PREFIX)
                   and k[len(ENCODER_PREFIX):] in current):
                self.model.encoder_weights = ""  # the file's encoder, written at settle time
        else:
            record = checkpoint.get("sine_encoder")
            if record is not None:
                restore_encoder(self.model, record, source, getattr(self, "_folder", ""))
            elif not getattr(self.model, "encoder_weights", ""):
                raise KeyError(f"{source}: no '{ENCODER_PREFIX}*' keys and no encoder record: "
                               "the frozen DINOv2 is not in the file; set "
                               "MODEL.SINE.ENCODER.WEIGHTS to its checkpoint")
            restored = self.model.state_dict()
            incoming.update({k: v for k, v in restored.items() if k.startswith(ENCODER_PREFIX)})
        checkpoint["model"] = incoming
        checkpoint.pop("sine_encoder", None)
        return super()._load_model(checkpoint)
