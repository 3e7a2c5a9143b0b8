"""Draining on SIGTERM: report not ready and keep serving while load balancers notice, then stop.

uvicorn stops on SIGTERM at once: it closes its socket, finishes the requests in flight and runs
the lifespan's shutdown (which flushes the prediction log). A load balancer that still believes
the replica is ready sends it a request in that moment and gets a refused connection. With
`BITLOOP_API_DRAIN_SECONDS` set, the first SIGTERM only turns `/ready` to 503 for that long, so
health checks take the replica out of rotation, and then hands the signal to uvicorn; a second
SIGTERM stops at once.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from types import FrameType

log = logging.getLogger(__name__)


class Drain:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.since: float | None = None
        """time.monotonic() of the SIGTERM that started the drain."""

    @property
    def draining(self) -> bool:
        return self.since is not None

    def install(self) -> None:
        """Stand in front of the server's SIGTERM handler (call from the lifespan, in the main thread)."""
        if self.seconds <= 0 or threading.current_thread() is not threading.main_thread():
            return
        stop = signal.getsignal(signal.SIGTERM)
        if not callable(stop):  # no server handler to hand over to: keep the default
            return

        def on_sigterm(sig: int, frame: FrameType | None) -> None:
            if self.since is not None:
                stop(sig, frame)
                return
            self.since = time.monotonic()
            log.info("SIGTERM: not ready, draining before shutdown", extra={"seconds": self.seconds})
            timer = threading.Timer(self.seconds, stop, (sig, frame))
            timer.daemon = True
            timer.start()

        signal.signal(signal.SIGTERM, on_sigterm)
