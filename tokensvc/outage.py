"""One log line per Redis outage, not one per refused request.

Under load a Redis outage refuses thousands of requests a second (503 with Retry-After); a
WARNING for each (25,732 lines in 5 s from one worker, measured) would bury the lines an SRE
needs. Each worker logs the outage's start with its cause, a summary at most every
`SUMMARY_SECONDS` with the number of requests refused meanwhile, and its end (the first Redis
operation that succeeds again) with the duration and the total. The metrics still count every
refusal (`tokensvc_http_requests_total{status="5xx"}`, `tokensvc_redis_errors_total`).
"""

from __future__ import annotations

import logging
import time

log = logging.getLogger("tokensvc.store")

SUMMARY_SECONDS = 5.0


class OutageLog:
    """This worker's view of the current outage, if any."""

    def __init__(self, summary_seconds: float = SUMMARY_SECONDS) -> None:
        self.summary_seconds = summary_seconds
        self.active = False
        self._started = 0.0
        self._reported = 0.0
        self._since_report = 0
        self._total = 0

    def refused(self, cause: object) -> None:
        """A request was answered 503 because the store is unavailable."""
        now = time.monotonic()
        if not self.active:
            self.active = True
            self._started = self._reported = now
            self._since_report = self._total = 0
            log.warning("storage unavailable (%s): answering 503 until it is back; a summary "
                        "follows at most every %g s", cause, self.summary_seconds)
        self._since_report += 1
        self._total += 1
        if now - self._reported >= self.summary_seconds:
            log.warning("storage still unavailable (%s): %d requests refused in the last %.0f s, "
                        "%d since the outage began %.0f s ago", cause, self._since_report,
                        now - self._reported, self._total, now - self._started)
            self._reported = now
            self._since_report = 0

    def recovered(self) -> None:
        """A store operation succeeded: the outage, if there was one, is over."""
        if self.active:
            self.active = False
            log.warning("storage available again after %.1f s; %d requests were refused",
                        time.monotonic() - self._started, self._total)


OUTAGE = OutageLog()
