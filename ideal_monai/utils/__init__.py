from .allocator import retain_freed_memory
from .atomic import atomic_path, atomic_save_torch, atomic_write_text, remove_stale_temporaries
from .checksums import file_sha256
from .config_checks import check_config_values
from .precision import PRECISIONS, AutocastInferer, autocast, cpu_has_native_bf16, resolve_precision
from .weights import (encoder_state_from_checkpoint, init_from_pretrained, is_rank0, load_checkpoint_file,
                      load_model_weights, load_state_dict_checked, unwrap)

__all__ = ["file_sha256", "check_config_values", "PRECISIONS", "AutocastInferer", "autocast", "cpu_has_native_bf16", "resolve_precision", "retain_freed_memory", "atomic_path", "atomic_save_torch", "atomic_write_text", "remove_stale_temporaries", "encoder_state_from_checkpoint", "init_from_pretrained", "load_model_weights", "unwrap", "is_rank0", "load_checkpoint_file", "load_state_dict_checked"]
