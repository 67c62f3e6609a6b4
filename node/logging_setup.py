"""One logging configuration for the node process, including py-libp2p's own loggers.

py-libp2p sets ``propagate=False`` on its ``libp2p`` logger without giving it a handler, so its
records fall through to Python's last-resort handler and land on stderr whatever the application
configured; a few modules also log through the root logger. Several of those messages are emitted
on perfectly normal events (every DHT stream end logs "Failed to read DHT message from stream").
Here we give ``libp2p`` our handler, and demote the known-benign messages to DEBUG so an operator's
log shows what matters.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

__all__ = ["BENIGN_LIBP2P_MESSAGES", "configure_logging"]

# Message prefixes py-libp2p 0.8.1 logs at WARNING/ERROR on normal stream or connection ends.
BENIGN_LIBP2P_MESSAGES: tuple[str, ...] = (
    "Failed to read DHT message from stream",
    "Error getting transport addresses",
    "Failed to store value at peer",
    "Error in DHT maintenance loop",
    "Error stopping",
    "fail to open pubsub stream",
    "Failed to send",
    "Error closing",
    "Stream reset",
    "Failed to handle",
    "Error handling",
    "Connection closed",
    "Failed to open stream",
    "Error while reading",
    "Error reading",
    "Identify",
    "identify",
    "RT Refresh",
    "Random walk",
    "random walk",
    "Routing table",
    "Failed to dial",
    "Failed to connect",
    "Peer stream retry",
    "Failed to ping",
    "Error pinging",
    "Error in stream handler",
    "Unexpected exception",
    "Yamux connection closed unexpectedly",  # every time a peer stops
    "[ADDCONN_FAIL]",  # an inbound connection arriving while the node shuts down
    "Failed to parse protobuf message",  # a DHT peer that hung up mid-message
    "GRAFT flood detected",  # a peer re-grafting within the prune backoff; already penalised
    "MultiselectClient handshake",  # a peer that went away mid-negotiation
    "Error in handle_incoming",  # yamux: the peer reset the TCP connection
    "Failed to open TCP stream",  # a dial refused (a departed peer); dial() reports why at DEBUG
)

_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
# py-libp2p puts peer-supplied bytes into some messages (a refused DHT value, hex-encoded: 2 MB of
# log per 1 MiB record); a hostile peer must not be able to fill the disk through our log.
MAX_LOGGED_MESSAGE = 2000


class _DemoteBenign(logging.Filter):
    """Turn known-benign libp2p warnings into DEBUG records (dropped unless DEBUG is on)."""

    def __init__(self, debug: bool) -> None:
        super().__init__()
        self._debug = debug

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.CRITICAL and (record.name == "root" or record.name.startswith("libp2p")):
            message = record.getMessage()
            if any(message.startswith(prefix) for prefix in BENIGN_LIBP2P_MESSAGES):
                record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            if len(message) > MAX_LOGGED_MESSAGE:
                record.msg = f"{message[:MAX_LOGGED_MESSAGE]}… ({len(message)} characters, cut)"
                record.args = None
        return self._debug or record.levelno >= logging.INFO


def configure_logging(
    level: str = "INFO", log_file: Path | None = None, libp2p_level: str = "WARNING"
) -> None:
    """Route every logger, libp2p's included, to one handler (stderr, or ``log_file`` if given).

    ``libp2p_level`` bounds libp2p's own verbosity independently of ours, because at INFO it logs
    every stream and connection.
    """
    # ``import libp2p`` runs its own setup_logging(), which clears the ``libp2p`` logger's handlers:
    # imported after this function, it would send every libp2p record to Python's last-resort
    # stderr handler. Import it first, whoever imports it next.
    import libp2p  # noqa: F401

    handler: logging.Handler
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(log_file, encoding="utf-8")
    else:
        handler = logging.StreamHandler(sys.stderr)
    debug = level.upper() == "DEBUG"
    handler.setFormatter(logging.Formatter(_FORMAT))
    handler.addFilter(_DemoteBenign(debug))

    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())

    libp2p_logger = logging.getLogger("libp2p")
    for old in list(libp2p_logger.handlers):
        libp2p_logger.removeHandler(old)
    libp2p_logger.addHandler(handler)
    libp2p_logger.propagate = False
    libp2p_logger.setLevel(logging.DEBUG if debug else libp2p_level.upper())
    # Sub-loggers created before this call may carry their own level; let the parent decide.
    for name, logger in list(logging.Logger.manager.loggerDict.items()):
        if isinstance(logger, logging.Logger) and name.startswith("libp2p."):
            logger.setLevel(logging.NOTSET)
    for noisy in ("hypercorn.access", "zeroconf", "multiaddr", "async_service"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.captureWarnings(True)
