# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Opt-in inference speed modes (``MODEL.DIFFEWS.INFERENCE_DTYPE``, ``MODEL.DIFFEWS.COMPILE``).

Both change float rounding, so masks are not bit-identical to fp32 eager inference; their measured
effect (mask agreement, mIoU on the synthetic benchmark) is in tools/BENCHMARKS.md. They are
inference settings: ``DiffewS.train()`` refuses them (training uses ``SOLVER.AMP``).
"""

import logging

import torch

logger = logging.getLogger(__name__)

__all__ = ["DTYPES", "set_inference_dtype", "is_float32", "compile_for_inference",
           "cpu_has_bf16_kernels", "warn_if_bf16_emulated"]

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
          "bfloat16_vae": torch.float32}
# "bfloat16_vae": the VAE in bfloat16, the UNet in float32. On a CPU with bf16 kernels (oneDNN,
# avx512_bf16) the VAE gains most (2.0-2.3x measured per part, the UNet 1.14x; issue 31), and
# keeping the UNet in fp32 keeps its keys/values and attention exact
VAE_DTYPES = {"bfloat16_vae": torch.bfloat16}


# CPU flags of native bfloat16 arithmetic; without them oneDNN emulates bf16 through fp32
# conversions (measured on an AVX2-only AMD EPYC: bfloat16 14x slower than float32, mid weights
# at 256 px; tools/BENCHMARKS.md "bf16 on a CPU without bf16 kernels")
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_has_bf16_kernels(cpuinfo: str = "/proc/cpuinfo"):
    """True / False whether the CPU flags list native bf16 arithmetic; None when unknown (no
    readable ``cpuinfo``, e.g. not Linux)."""
    try:
        with open(cpuinfo) as f:
            flags = next((line.split(":", 1)[1].split() for line in f
                          if line.startswith("flags")), None)
    except OSError:
        return None
    return None if flags is None else any(flag in flags for flag in BF16_CPU_FLAGS)


def set_inference_dtype(model, name: str) -> None:
    """Cast the UNet and the VAE to ``name`` ("float32", "float16", "bfloat16"), or only the VAE
    ("bfloat16_vae"). Latents, keys and values then live in the UNet's dtype; decoding still maps
    to uint8 in fp32."""
    if name not in DTYPES:
        raise ValueError(
            f"MODEL.DIFFEWS.INFERENCE_DTYPE must be one of {sorted(DTYPES)}, got {name!r}"
        )
    dtype = DTYPES[name]
    vae_dtype = VAE_DTYPES.get(name, dtype)
    model.inference_dtype = dtype
    if dtype != torch.float32 or vae_dtype != torch.float32:
        from diffusers.utils import logging as diffusers_logging

        level = diffusers_logging.get_verbosity()
        diffusers_logging.set_verbosity_error()  # its "keep modules in float32" note: none here
        try:
            model.unet.to(dtype)
            model.vae.to(vae_dtype)
        finally:
            diffusers_logging.set_verbosity(level)
        logger.info("Inference in %s (MODEL.DIFFEWS.INFERENCE_DTYPE)", name)


def warn_if_bf16_emulated(name: str, device: str, cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Warn (and return True) when ``name`` runs a part in bfloat16 on a CPU (``device``, the
    config's MODEL.DEVICE) whose flags list no native bf16 arithmetic."""
    if "bfloat16" not in name or not str(device).startswith("cpu"):
        return False
    if cpu_has_bf16_kernels(cpuinfo) is not False:
        return False
    logger.warning(
        "MODEL.DIFFEWS.INFERENCE_DTYPE %s on a CPU without bf16 kernels (none of %s in %s): bf16 "
        "is emulated there and runs many times slower than float32 (14x measured on an "
        "AVX2-only CPU); use float32", name, ", ".join(BF16_CPU_FLAGS), cpuinfo)
    return True


def is_float32(model) -> bool:
    """Whether both the UNet and the VAE run in float32 (training, ONNX export)."""
    return model.inference_dtype == torch.float32 and model.vae.dtype == torch.float32


def compile_for_inference(model) -> None:
    """``torch.compile`` the VAE encoder and decoder in place (modules, hooks and state-dict keys
    stay as they are): they hold most of an episode's FLOPs (docs/PROTOCOLS.md section 4) and are
    plain tensor functions. The UNet stays eager: its attention processors read and write the
    per-call KV bank, which dynamo guards on and recompiles for, layer by layer (measured: it falls
    back to eager after its recompile limit). The first call of each input shape compiles."""
    for module in (model.vae.encoder, model.vae.decoder):
        module.forward = torch.compile(module.forward)
    model.compiled = True
    logger.info("torch.compile: VAE encoder and decoder (MODEL.DIFFEWS.COMPILE)")
