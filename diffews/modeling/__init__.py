# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
from .kv_fusion import KVBank, KVFusionAttnProcessor2_0, fused_layer_names, set_kv_fusion_processors
from .support_set import SupportSet, SupportSetError
from .meta_arch import DiffewS
from .sine import SINE, SINESupportSet  # noqa: F401  (registers the SINE meta-architecture)
from .unet import add_support_conv, load_pretrained_unet, load_release_state_dict, save_release_unet
