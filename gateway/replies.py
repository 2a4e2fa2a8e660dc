"""Routes a turn's reply to its platform's shaping and live streaming, without naming platforms.

The turn runner asks here, not the adapters directly: the adapter set is the composition root's
business, and a reply for a platform that is no longer enabled must still be queued (the sender
turns it into a clear dead letter) rather than fail the turn.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from adapters.base import Adapter, ReplyStream
from gateway.messages import OutboundMessage, Target

log = logging.getLogger(__name__)


class ReplyChannels:
    """Per-platform reply preparation and streams, looked up by the reply's target platform."""

    def __init__(self, adapters: Mapping[str, Adapter]) -> None:
        self._adapters = adapters

    def prepare(self, reply: OutboundMessage) -> list[OutboundMessage]:
        """The pieces to queue for `reply`; the reply itself when its adapter is absent or misbehaves."""
        adapter = self._adapters.get(reply.target.platform)
        if adapter is None:
            return [reply]
        try:
            pieces = adapter.prepare(reply)
        except Exception:  # a shaping bug must not lose the answer: send it whole
            log.exception("adapter %s could not prepare a reply; sending it unprepared", reply.target.platform)
            return [reply]
        keys = {p.idempotency_key for p in pieces}
        if not pieces or len(keys) != len(pieces):
            log.error(
                "adapter %s prepared %d pieces with %d distinct keys", reply.target.platform, len(pieces), len(keys)
            )
            return [reply]
        return pieces

    def open_stream(self, target: Target, idempotency_key: str) -> ReplyStream | None:
        """A live view of the answer while it is generated, if the platform offers one for this chat."""
        adapter = self._adapters.get(target.platform)
        if adapter is None:
            return None
        try:
            return adapter.open_stream(target, idempotency_key)
        except Exception:
            log.exception("adapter %s could not open a reply stream", target.platform)
            return None
