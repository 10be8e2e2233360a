"""Summaries: propose a compressed history, then accept (one transaction) or reject it.

A proposal leaves the conversation as it was: it only stores what the summariser was billed
(:func:`summarizer_draft`, a dead record, accepted or not, and also when the summary fails
after its request was billed). Accepting marks the replaced
records dead and inserts the summary as one live record, atomically. System prompts are
never replaced.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from importlib import resources

from ._summary_stream import SummaryAttempts, SummaryLimits
from .chunks import Chunk, Reply
from .operators import Done, is_async
from .persist import reply_metadata
from .providers.base import Model, Request
from .records import Record, RecordType
from .store.base import RecordDraft
from .tokens import estimate_tokens

__all__ = [
    "SUMMARY_PREFIX",
    "SummaryProposal",
    "default_prompt",
    "summarizer_draft",
    "summary_draft",
    "summary_request",
    "transcript",
]

SUMMARY_PREFIX = "Summary of the conversation so far:\n\n"

NO_LIMITS = SummaryLimits()
"""No retry, no time limit: the summariser's stream is read to its end."""


def default_prompt() -> str:
    """The summariser instructions shipped with the package (``data/summarize_prompt.md``)."""
    return resources.files("rxcontext").joinpath("data", "summarize_prompt.md").read_text("utf-8")


@dataclass(frozen=True, slots=True)
class SummaryProposal:
    """A summary that has not been applied: accept it with ``ContextWindow.accept_summary``."""

    context_id: str
    text: str
    replaced_ids: tuple[int, ...]
    original_tokens: int
    summary_tokens: int
    reply: Reply


_LABELS = {
    RecordType.PROMPT: "User",
    RecordType.MODEL_RESP: "Assistant",
    RecordType.TOOL_CALL: "Tool call",
    RecordType.TOOL_OUTPUT: "Tool result",
}


def transcript(records: Sequence[Record]) -> str:
    """A plain-text transcript of the non-system records, for the summariser to read
    (attachments named, with their media types)."""
    lines = []
    for r in records:
        if r.type is RecordType.SYSTEM_PROMPT:
            continue
        label = _LABELS[r.type]
        if r.type is RecordType.TOOL_CALL:
            lines.append(f"{label} {r.tool_name or '?'}({r.content})")
        elif r.type is RecordType.TOOL_OUTPUT:
            lines.append(f"{label} ({r.tool_name or r.tool_call_id or '?'}): {r.content}")
        else:
            lines.append(f"{label}: {r.content}")
        if r.attachments:
            # The summariser reads text: it learns what was attached, not the bytes.
            lines[-1] += "".join(
                f"\n[attached: {a.name or a.url or 'unnamed'} ({a.media_type})]"
                for a in r.attachments
            )
    return "\n\n".join(lines)


def summary_request(context_id: str, live: Sequence[Record], prompt: str) -> Request:
    """The summariser's request: its instructions as the system prompt, the transcript as input.

    A transcript (rather than the raw turns) works with every provider, whatever role the
    history ends on.
    """
    return Request(
        records=[
            Record.unsaved(context_id, RecordType.SYSTEM_PROMPT, prompt),
            Record.unsaved(context_id, RecordType.PROMPT, transcript(live)),
        ]
    )


def replaceable(live: Sequence[Record]) -> list[Record]:
    """The records a summary replaces: every live record but the system prompts."""
    return [r for r in live if r.type is not RecordType.SYSTEM_PROMPT]


def _prepare(
    context_id: str, live: Sequence[Record], prompt: str | None
) -> tuple[list[Record], Request]:
    replaced = replaceable(live)
    if not replaced:
        raise ValueError(
            "nothing to summarize: the context has no live records besides system prompts"
        )
    return replaced, summary_request(context_id, live, prompt or default_prompt())


def propose(
    model: Model,
    context_id: str,
    live: Sequence[Record],
    prompt: str | None = None,
    on_chunk: Callable[[Chunk], None] | None = None,
    *,
    spend: Callable[[Reply], None] | None = None,
    limits: SummaryLimits = NO_LIMITS,
) -> SummaryProposal:
    """Ask ``model`` for a summary of ``live`` (streaming; ``on_chunk`` sees each chunk),
    within ``limits`` (the window's timeouts and retry policy: :mod:`._summary_stream`).

    ``spend`` gets what the request was billed, as the summariser's reply, as soon as it is
    known: once it answered (with a summary, or billed for none), or when it fails after its
    stream reported usage (a provider error, a cut connection, ``on_chunk`` raising: that
    error is raised unchanged once ``spend`` returned).
    """
    if is_async(on_chunk):
        raise TypeError(
            f"summarize(on_chunk={on_chunk!r}) got an async function, which the blocking "
            "summarize() cannot await: use await cw.asummarize(on_chunk=...), or give a "
            "plain function"
        )
    replaced, request = _prepare(context_id, live, prompt)
    attempts = SummaryAttempts(model, limits)
    try:
        reply = attempts.run(request, on_chunk)
    except BaseException:
        if spend is not None and attempts.billed() is not None:
            spend(attempts.reply())  # billed, then cut: spent all the same
        raise
    if spend is not None and _spends(reply):
        spend(reply)
    return _proposal(context_id, replaced, reply)


async def apropose(
    model: Model,
    context_id: str,
    live: Sequence[Record],
    prompt: str | None = None,
    on_chunk: Callable[[Chunk], Done] | None = None,
    *,
    spend: Callable[[Reply], Awaitable[None]] | None = None,
    limits: SummaryLimits = NO_LIMITS,
) -> SummaryProposal:
    """The asyncio twin of :func:`propose` (an ``async def`` ``on_chunk`` is awaited;
    ``spend`` is awaited). The model's stream is closed before an error (``on_chunk``'s own
    too) reaches the caller, as the sync loop's is."""
    replaced, request = _prepare(context_id, live, prompt)
    attempts = SummaryAttempts(model, limits)
    try:
        reply = await attempts.arun(request, on_chunk)
    except BaseException:
        if spend is not None and attempts.billed() is not None:
            await spend(attempts.reply())  # billed, then cut: spent all the same
        raise
    if spend is not None and _spends(reply):
        await spend(reply)
    return _proposal(context_id, replaced, reply)


def _spends(reply: Reply) -> bool:
    """Whether a summariser's finished reply is kept: a summary, or an answer with no text
    that was billed (one with neither cost nothing anyone knows of)."""
    return bool(reply.text.strip()) or reply.usage is not None


def _proposal(context_id: str, replaced: Sequence[Record], reply: Reply) -> SummaryProposal:
    text = reply.text.strip()
    if not text:
        raise ValueError("the summariser returned no text; the conversation was not changed")
    return SummaryProposal(
        context_id=context_id,
        text=text,
        replaced_ids=tuple(r.id for r in replaced),
        original_tokens=sum(r.est_tokens for r in replaced),
        summary_tokens=estimate_tokens(text),
        reply=reply,
    )


def summary_draft(proposal: SummaryProposal) -> RecordDraft:
    """The record an accepted summary becomes.

    It is stored as a user-side record (``PROMPT``, metadata ``summary: true``) so that every
    provider accepts the history that follows it: Anthropic requires the first message to be
    the user's.
    """
    return RecordDraft(
        RecordType.PROMPT,
        SUMMARY_PREFIX + proposal.text,
        metadata={"summary": True, "replaced": len(proposal.replaced_ids)},
    )


def summarizer_draft(billed: SummaryProposal | Reply, model_name: str | None) -> RecordDraft:
    """The record that keeps what the summariser (``model_name``) was billed: for a
    proposal, stored when it is made, whether or not it is accepted; for the reply of a
    summary that failed after its request was billed, what it delivered.

    It is the summariser's reply as a dead MODEL_RESP (metadata ``summarizer: true``), with
    the ``model``, ``provider`` and ``usage`` every reply carries: a context's cost is read
    from its records (:mod:`rxcontext.cost`), and the request was paid for even if the
    summary never goes live. Dead, it is never sent to a model.
    """
    reply = billed.reply if isinstance(billed, SummaryProposal) else billed
    return RecordDraft(
        RecordType.MODEL_RESP,
        reply.text.strip(),
        live=False,
        streamed=True,
        metadata={**reply_metadata(reply, model_name=model_name), "summarizer": True},
    )
