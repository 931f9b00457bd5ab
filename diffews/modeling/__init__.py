# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
from ..utils.errors import SupportSetError
from .kv_fusion import KVBank, KVFusionAttnProcessor2_0, fused_layer_names, set_kv_fusion_processors
from .meta_arch import DiffewS
from .sine import SINE, SINESupportSet  # (importing registers the SINE meta-architecture)
from .support_set import SupportSet
from .unet import add_support_conv, load_pretrained_unet, load_release_state_dict, save_release_unet

__all__ = ["DiffewS", "KVBank", "KVFusionAttnProcessor2_0", "SINE", "SINESupportSet", "SupportSet",
           "SupportSetError", "add_support_conv", "fused_layer_names", "load_pretrained_unet",
           "load_release_state_dict", "save_release_unet", "set_kv_fusion_processors"]
