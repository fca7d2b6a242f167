"""The owning process of a shmpool instance."""

from loguru import logger

from .coordinator import Coordinator
from .proto import ProtoDimension

# A library does not speak unless asked (loguru's guidance): the CLI and scripts/run enable it.
logger.disable("coordinator")

__all__ = ["Coordinator", "ProtoDimension"]
