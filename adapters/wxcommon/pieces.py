"""A turn's reply as the messages a platform can carry, each its own outbox row.

The first piece keeps the reply's idempotency key, because a live stream (a card, an AI-bot stream)
was opened under that key and the first piece is what finishes it; later pieces are keyed
`<key>.<n>` (n from 2), so each is queued, retried and deduplicated on its own.
"""

from __future__ import annotations

from gateway.messages import MarkdownPart, OutboundMessage, TextPart


def reply_pieces(
    reply: OutboundMessage, pieces: list[str], *, markdown: bool, detach_later: bool = False
) -> list[OutboundMessage]:
    """`reply` split into `pieces`; `detach_later` drops the reply reference from pieces after the first
    (platforms whose reference can answer only once send them as proactive messages)."""

    def part(text: str) -> TextPart | MarkdownPart:
        return MarkdownPart(text=text) if markdown else TextPart(text=text)

    out = [reply.model_copy(update={"parts": (part(pieces[0] if pieces else reply.text),)})]
    later_target = reply.target.model_copy(update={"reply_ref": ""}) if detach_later else reply.target
    out += [
        reply.model_copy(
            update={"parts": (part(p),), "idempotency_key": f"{reply.idempotency_key}.{i}", "target": later_target}
        )
        for i, p in enumerate(pieces[1:], 2)
    ]
    return out
