"""The owning process of a shmpool instance."""

from .coordinator import Coordinator
from .proto import ProtoDimension

__all__ = ["Coordinator", "ProtoDimension"]
