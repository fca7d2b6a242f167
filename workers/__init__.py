"""Reader worker processes and their supervision."""

from loguru import logger

logger.disable("workers")  # enabled by the CLI, or in a worker by SHMPOOL_LOG_LEVEL
