"""One polling helper for everything shardctl waits on."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from tenacity import (
    RetryError,
    Retrying,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential,
)

T = TypeVar("T")


class NotYet(Exception):
    """Raised by a probe to say "not ready yet"; the message says what it saw."""


def wait_for(
    probe: Callable[[], T],
    *,
    timeout: float,
    what: str,
    on_timeout: Callable[[str], Exception],
    interval: float = 0.2,
    max_interval: float = 2.0,
) -> T:
    """Call ``probe`` until it returns; after ``timeout`` seconds raise ``on_timeout(detail)``.

    The probe raises :class:`NotYet` while the awaited state is not reached; any other
    exception ends the wait at once. ``detail`` names what was awaited and the last thing seen.
    """
    retrying = Retrying(
        retry=retry_if_exception_type(NotYet),
        stop=stop_after_delay(timeout),
        wait=wait_exponential(multiplier=interval, max=max_interval),
        reraise=False,
    )
    try:
        return retrying(probe)
    except RetryError as exc:
        last = exc.last_attempt.exception()
        raise on_timeout(
            f"timed out after {timeout:g}s waiting for {what} (last: {last})"
        ) from None
