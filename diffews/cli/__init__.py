# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""The one command-line layer of every entry point (``tools/``, ``inference_*/``): the shared
flags (``args``), config loading with overrides (``config``), the checks run before any model is
built (``preflight``), one-line errors and exit statuses (``errors``) and ``launch`` (``launch``).
"""

from .args import (OneLineArgumentParser, add_common_arguments, add_distributed_arguments,
                   add_list_argument, check_counts, config_overrides, deprecate, entry_parser,
                   one_line_errors, parse_list, take_trailing_overrides)
from .config import flag_overrides, load_config_checked, load_entry_config
from ..utils.errors import UsageError
from .errors import README_SECTIONS, exit_status, format_error, run_cli
from .launch import launch_cli
from .preflight import (check_config_values, check_datasets, check_image_size, check_output_dir,
                        check_pretrained, check_weights, preflight)

__all__ = ["OneLineArgumentParser", "README_SECTIONS", "UsageError", "add_common_arguments",
           "add_distributed_arguments", "add_list_argument", "check_config_values",
           "check_counts", "check_datasets", "check_image_size", "check_output_dir",
           "check_pretrained", "check_weights", "config_overrides", "deprecate", "entry_parser",
           "exit_status", "flag_overrides", "format_error", "launch_cli", "load_config_checked",
           "load_entry_config", "one_line_errors", "parse_list", "preflight", "run_cli",
           "take_trailing_overrides"]
