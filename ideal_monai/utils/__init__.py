from .atomic import atomic_path, atomic_save_torch, atomic_write_text

__all__ = ["atomic_path", "atomic_save_torch", "atomic_write_text"]
