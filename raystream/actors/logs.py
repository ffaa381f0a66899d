"""Logging inside raystream's actor processes.

Ray captures an actor's stderr into its worker log (and, with ``log_to_driver``, the driver's console), but
leaves Python logging unconfigured, so INFO lines — one per role change, ISR change, election — would be
dropped and the rest printed without times. Each actor process calls :func:`configure` once: a timestamped
stderr handler on the ``raystream`` logger, level ``$RAYSTREAM_LOG_LEVEL`` (default INFO).
"""

from __future__ import annotations

import logging
import os

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure() -> None:
    """Idempotent; touches only the ``raystream`` logger (not the root logger Ray uses)."""
    logger = logging.getLogger("raystream")
    if any(getattr(h, "_raystream", False) for h in logger.handlers):
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(_FORMAT))
    handler._raystream = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(os.environ.get("RAYSTREAM_LOG_LEVEL", "INFO").upper())
    logger.propagate = False
