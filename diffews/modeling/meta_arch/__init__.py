from .diffews import DiffewS

__all__ = ["DiffewS"]
