# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Presence for DiffewS: the signals measured in the query pass, the readout that turns a decoded
prediction into a mask, a score and a presence decision, and the calibration a checkpoint
carries.

``PresenceBlocks`` is a mixin of ``DiffewSBlocks`` (``building_blocks.py``); it uses the
attributes ``DiffewS.__init__`` sets (``vae``, ``fused_layers``, ``presence_head``,
``presence_from_weights``, thresholds).

Who decides (issue 28):

* ``MODEL.DIFFEWS.PRESENCE_THRESHOLD`` >= 0 (asked for): every path decides with it and
  ``PRESENCE_SIGNAL``, the FSS benchmarks included;
* otherwise the benchmark path (``DiffewS.forward``) never decides: the published protocols put
  the object in every query; it still reports the signal (the checkpoint's calibrated one when
  it carries one), so that absent-target episodes measure its AUROC;
* the predictor (``DiffewSPredictor``: FSIS, VOS, autolabel, the web demo) applies the
  checkpoint's calibrated signal and threshold (``default_presence_threshold``), unless
  ``MODEL.DIFFEWS.PRESENCE_FROM_WEIGHTS`` is False.

``present`` is True (decided present, the mask non-empty), False (decided absent, or the mask is
empty: an empty mask is never "present") or None (no decision was made).
"""

import logging
import math
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch

from ..kv_fusion import KVBank
from ..presence_head import QueryProbe, mask_foreground
from ..readout import MEASURED_SIGNALS, PRESENCE_SIGNALS, presence_signals
from ..support_set import SupportSet

logger = logging.getLogger(__name__)

__all__ = ["PresenceBlocks", "check_threshold"]


def check_threshold(value, what: str = "MODEL.DIFFEWS.PRESENCE_THRESHOLD") -> float:
    """``value`` as a float; a non-finite one (NaN, inf) is refused with a one-line error."""
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number (< 0: no decision), got {value}")
    return value


class PresenceBlocks:
    """Presence signals, the readout and the decision (see the module docstring)."""

    # MODEL.DIFFEWS.PRESENCE_SIGNAL / PRESENCE_THRESHOLD (DiffewS.__init__ sets them); the
    # signal may follow the loaded weights' calibration (``adopt_presence_calibration``)
    presence_signal = "score"
    configured_signal = "score"
    presence_threshold = -1.0
    presence_from_weights = True
    # ``presence_head`` (a ``presence_head.PresenceHead`` or None) is set by DiffewS.__init__
    # (not a class attribute here: it would hide the registered submodule from nn.Module)
    presence_calibration: Optional[Dict] = None  # what the loaded weights carry
    measure_attention = False  # True: callers measure every signal (calibration)

    # -- measuring ---------------------------------------------------------------------------
    @property
    def needs_measure(self) -> bool:
        """Whether callers should run ``query_pass_measured``: a measured signal decides or is
        reported, or ``measure_attention`` asks for every signal (calibration)."""
        return self.presence_signal in MEASURED_SIGNALS or self.measure_attention

    def _mask_latent_ends(self, size: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """(C,) posterior-mean latents (spatial mean) of an all-background and an
        all-foreground mask image of ``size`` pixels, computed once per size."""
        cache = self.__dict__.setdefault("_mask_ends", {})
        key = (size, str(self.device))
        if key not in cache:
            masks = torch.stack([torch.zeros(size, size), torch.ones(size, size)])
            z = self.encode(self.mask_to_image(masks), sample=False).float().mean(dim=(-2, -1))
            cache[key] = (z[0], z[1])
        return cache[key]

    def support_foreground(self, supports: Union[SupportSet, Sequence[SupportSet]]
                           ) -> torch.Tensor:
        """The supports' foreground weights read from their mask latents (``mask_foreground``):
        (1, K, h, w) for one shared set, (B, K, h, w) for one set per query."""
        sets = [supports] if isinstance(supports, SupportSet) else list(supports)
        c = self.vae.config.latent_channels
        bg, fg = self._mask_latent_ends(self._pixels(sets[0].latents))
        return torch.stack([mask_foreground(s.latents[:, c:], bg.to(s.latents.device),
                                            fg.to(s.latents.device)) for s in sets])

    def query_pass_probed(self, query_latents: torch.Tensor,
                          supports: Union[SupportSet, Sequence[SupportSet]],
                          prompt: torch.Tensor) -> Tuple[torch.Tensor, QueryProbe]:
        """``query_pass`` in torch with a ``QueryProbe`` in every fused layer (no extra pass;
        the output is the same bit for bit). Returns (UNet output (B, C, h, w), the probe).

        This pass is always torch's: with an inference backend attached it is said once per
        model in the log (the ONNX graphs do not expose the attention weights)."""
        if self.inference_backend is not None and not getattr(self, "_said_torch_pass", False):
            self._said_torch_pass = True
            logger.warning(
                "The measured presence signals (MODEL.DIFFEWS.PRESENCE_SIGNAL attention or head, "
                "or a calibration measuring them) are read inside torch's fused attention "
                "layers: these query passes run the torch UNet, not the ONNX Runtime backend "
                "(which still encodes, runs the support pass and decodes); PRESENCE_SIGNAL score "
                "or peak keeps the query pass in ONNX Runtime")
        fg = self.support_foreground(supports) if self.presence_head is not None else None
        probe = QueryProbe(fg, self.head_pooled if self.presence_head is not None else ())
        out = self._unet(query_latents, prompt, KVBank(supports, probe=probe))
        if self.presence_head is not None:  # the output, minus the query-mask latent, as a mask
            bg, fg_end = self._mask_latent_ends(self._pixels(out))
            probe.record_output(mask_foreground(-out, bg.to(out.device), fg_end.to(out.device)))
        return out, probe

    def _pixels(self, latents: torch.Tensor) -> int:
        """The image size of square latents."""
        return int(latents.shape[-1]) * 2 ** (len(self.vae.config.block_out_channels) - 1)

    def presence_logits(self, probe: QueryProbe) -> torch.Tensor:
        """(B,) logits of the presence head from a probed query pass."""
        return self.presence_head(probe.features(
            self.fused_layers, self.head_pooled, self.presence_head.hparams["prototype"]))

    def query_pass_measured(self, query_latents: torch.Tensor,
                            supports: Union[SupportSet, Sequence[SupportSet]],
                            prompt: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """``query_pass_probed`` read out: (UNet output, {"attention": (B,) support share,
        "head": (B,) the presence head's probability, for a model with a head})."""
        out, probe = self.query_pass_probed(query_latents, supports, prompt)
        measured = {"attention": probe.support_share()}
        if self.presence_head is not None:
            measured["head"] = torch.sigmoid(self.presence_logits(probe).float())
        return out, measured

    # -- readout and decision ----------------------------------------------------------------
    def postprocess(self, images: torch.Tensor,
                    measured: Optional[Dict[str, torch.Tensor]] = None,
                    presence_threshold: Optional[float] = None) -> List[Dict]:
        """(N, 3, H, W) decoded predictions -> per image {"pred_image", "pred_mask", "score",
        "presence", "present", "signals"}.

        "presence" is the ``presence_signal`` value (higher = more likely present; NaN when it
        is a measured signal that was not measured); "signals" holds every signal computed
        (``readout.presence_signals``). With a threshold >= 0 (``presence_threshold``, else
        MODEL.DIFFEWS.PRESENCE_THRESHOLD), a prediction whose presence is below it is judged
        absent: "present" False, an empty "pred_mask" and score 0; one at or above it is
        "present" True (False if its mask is empty). Without one, masks are the relative
        threshold's, unchanged, and "present" is None (False for an empty mask).
        """
        masks = self.threshold(images)
        scores = self.score(images, masks)
        signals = presence_signals(images, masks, scores, measured)
        threshold = check_threshold(self.presence_threshold if presence_threshold is None
                                    else presence_threshold, "presence_threshold")
        decide = threshold >= 0
        presence = signals.get(self.presence_signal)
        if presence is None:
            if decide:
                raise ValueError(f"MODEL.DIFFEWS.PRESENCE_SIGNAL {self.presence_signal!r} was not "
                                 "measured in this query pass (query_pass_measured)")
            presence = torch.full_like(scores, float("nan"))
        nonempty = masks.flatten(1).any(dim=1)
        if decide:
            keep = (presence >= threshold) & nonempty
            masks = masks & keep[:, None, None]
            scores = torch.where(keep, scores, torch.zeros_like(scores))
            present = [bool(k) for k in keep]
        else:
            present = [None if bool(k) else False for k in nonempty]
        return [{"pred_image": img, "pred_mask": m, "score": s, "presence": float(pr),
                 "present": ok, "signals": {k: float(v[i]) for k, v in signals.items()}}
                for i, (img, m, s, pr, ok) in enumerate(zip(images, masks, scores, presence,
                                                            present))]

    def _check_signal(self, signal: str, what: str) -> str:
        if signal not in PRESENCE_SIGNALS:
            raise ValueError(f"{what} must be one of {PRESENCE_SIGNALS}, got {signal!r}")
        if signal == "head" and self.presence_head is None:
            raise ValueError(f"{what} 'head' needs a presence head (MODEL.DIFFEWS.PRESENCE_HEAD."
                             "ENABLED, or weights trained with one)")
        return signal

    def set_presence(self, signal: str, threshold: float) -> None:
        """Set the presence signal (one of ``readout.PRESENCE_SIGNALS``) and threshold (< 0:
        no decision; non-finite values are refused)."""
        self._check_signal(signal, "MODEL.DIFFEWS.PRESENCE_SIGNAL")
        self.presence_threshold = check_threshold(threshold)
        self.presence_signal = self.configured_signal = signal
        self.adopt_presence_calibration(self.presence_calibration)

    def adopt_presence_calibration(self, calibration: Optional[Dict]) -> None:
        """Keep the calibration the loaded weights carry (``{"signal", "threshold", ...}``, or
        None). Without a configured decision (threshold < 0) and with
        MODEL.DIFFEWS.PRESENCE_FROM_WEIGHTS, its signal becomes the reported one."""
        if calibration is not None:
            calibration = dict(calibration)
            self._check_signal(calibration.get("signal"), "the weights' presence signal")
            calibration["threshold"] = check_threshold(calibration.get("threshold"),
                                                       "the weights' presence threshold")
        self.presence_calibration = calibration
        use = (calibration is not None and self.presence_from_weights
               and self.presence_threshold < 0)
        self.presence_signal = calibration["signal"] if use else self.configured_signal

    def default_presence_threshold(self) -> float:
        """The threshold the predictor applies when its caller names none: the configured one
        when >= 0, else the weights' calibrated one (PRESENCE_FROM_WEIGHTS), else -1."""
        if self.presence_threshold >= 0:
            return self.presence_threshold
        cal = self.presence_calibration
        if cal is not None and self.presence_from_weights:
            return float(cal["threshold"])
        return -1.0
