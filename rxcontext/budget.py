"""Budgets: a cap on what one context may spend, checked before each request is sent.

``ContextWindow(store, model, budget=Budget(max_tokens=200_000, max_usd=5))`` refuses a
request, before sending it, when what the context has spent plus what the request is
estimated to cost would go over a limit: :class:`~rxcontext.BudgetExceeded`, with the
numbers. Spent is counted over every reply the context ever had (its dead records too:
summarised replies were paid for, and so was every summary asked for and every discarded
attempt): tokens from the providers' usage totals the store keeps, money from
:mod:`rxcontext.cost`; and over the replies not settled yet (interrupted, or under way),
whose attempts were billed before their usage joins the totals: what their checkpoints
carry (:func:`unsettled_parts`). So a retry the budget refused leaves its reply
interrupted and its billing spent: the same prompt sent again by a new call, or the reply
resumed (its first request counts what its checkpoint carries), is refused as well.
A request's own cost is estimated from its input (the live records' token estimate,
:mod:`rxcontext.tokens`); its output cannot be known before it is written, so a reply may
end above the limit by its own output, and the next request is then refused. A retry
sends the whole request again: it is checked too, with what the reply's earlier attempts
were billed (Anthropic bills the input as its stream starts) counted as spent (that
reply's own row is not counted again), though the context's totals count it only once
the reply is settled.
Each part of that is priced by the model that billed it, as the stored reply will be
(:mod:`rxcontext.usage_by_model`): a resumed reply carries its cut attempts' usage, billed
by the model the window used then, and a native resume's stream is billed by the model of
the response it continues, whatever model the window uses now.

A money limit is only kept where the prices are known: with replies of unknown cost
(a model ``genai-prices`` does not know, a reply stored without usage) or a model without a
price, the request is refused rather than let through unchecked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

from .chunks import Usage
from .cost import context_cost, format_usd, price
from .errors import BudgetExceeded
from .records import Record
from .store.base import Spending, Store
from .usage_by_model import Part, parts_of

__all__ = ["Budget", "check_budget", "spending", "unsettled_parts"]

_EARLIER = " ({} of it by this reply's earlier attempts)"
"""How a refusal before a retry says what part of the spending its earlier attempts were."""

_UNSETTLED = " ({} of it by replies not settled yet)"
"""How a refusal says what part of the spending the context's unsettled replies were."""


@dataclass(frozen=True, slots=True)
class Budget:
    """Limits on what one context may spend; None: no limit of that kind.

    ``max_tokens``: provider tokens (input and output, as the providers count them in
    their usage totals). ``max_usd``: US dollars, priced by ``genai-prices``
    (``pip install 'rxcontext[prices]'``).
    """

    max_tokens: int | None = None
    max_usd: Decimal | float | int | str | None = None

    def __post_init__(self) -> None:
        tokens = self.max_tokens
        if tokens is not None:
            if isinstance(tokens, bool) or not isinstance(tokens, int):
                raise TypeError(f"Budget.max_tokens must be a whole number, not {tokens!r}")
            if tokens < 0:
                raise ValueError("Budget.max_tokens must not be negative")
        if self.max_usd is not None:
            try:
                usd = Decimal(str(self.max_usd))
            except ArithmeticError:  # decimal.InvalidOperation: not a number at all
                usd = Decimal("NaN")
            if not usd.is_finite() or usd < 0:
                raise ValueError(
                    f"Budget.max_usd must be a non-negative amount, not {self.max_usd!r}"
                )
            object.__setattr__(self, "max_usd", usd)

    @property
    def usd(self) -> Decimal | None:
        """``max_usd`` as a ``Decimal`` (or None)."""
        return None if self.max_usd is None else Decimal(str(self.max_usd))


def check_budget(
    budget: Budget,
    *,
    context: str,
    spent: Usage,
    records: Sequence[Record],
    estimate: int,
    model_name: str | None,
    billed: Usage | Sequence[Part] | None = None,
    unsettled: Sequence[Part] = (),
) -> None:
    """Raise :class:`~rxcontext.BudgetExceeded` if a request of about ``estimate`` input
    tokens to ``model_name`` would take ``context`` over ``budget``.

    ``spent``: the context's provider usage totals; ``records``: all its records (for the
    money spent); ``billed``: what a reply about to send its request again has been billed
    that neither counts yet (its earlier attempts), spent too: by the models that billed it
    (``(provider, model, usage)`` parts, each priced by its own), or a usage ``model_name``
    billed; ``unsettled``: what the context's other replies not settled yet (interrupted,
    or under way) were billed as their checkpoints say, by the models that billed it
    (a model None: its price unknown), spent too.
    """
    provider, _, model = (model_name or "").partition(":")
    if isinstance(billed, Usage):
        billed = [(provider or None, model or None, billed)]
    billed_total = sum((u for _, _, u in billed), Usage()) if billed else None
    if budget.max_tokens is not None:
        used = spent.total_tokens + (billed_total.total_tokens if billed_total else 0)
        open_ = sum(u.total_tokens for _, _, u in unsettled)
        used += open_
        if used + estimate > budget.max_tokens:
            by = _EARLIER.format(billed_total.total_tokens) if billed_total else ""
            by += _UNSETTLED.format(open_) if open_ else ""
            raise BudgetExceeded(
                f"context {context!r} would go over its budget of {budget.max_tokens} tokens:"
                f" {used} spent{by} + about {estimate} for this request",
                limit="tokens",
                spent=Decimal(used),
                estimate=Decimal(estimate),
                maximum=Decimal(budget.max_tokens),
            )
    limit = budget.usd
    if limit is None:
        return
    paid = context_cost(records)
    if not paid.complete:
        raise BudgetExceeded(
            f"context {context!r} has a budget of {format_usd(limit)} but the cost of"
            f" {paid.unpriced} of its replies is unknown (a model genai-prices does not"
            " know, searches it has no price for, or no usage): the budget cannot be kept",
            limit="usd",
            spent=None,
            estimate=None,
            maximum=limit,
        )
    ahead = price(Usage.of(estimate), model or None, provider or None)
    if ahead is None:
        raise BudgetExceeded(
            f"context {context!r} has a budget of {format_usd(limit)} but genai-prices has"
            f" no price for {model_name!r}: the budget cannot be kept",
            limit="usd",
            spent=paid.usd,
            estimate=None,
            maximum=limit,
        )

    def priced(parts: Sequence[Part], whose: str) -> Decimal:
        """What ``parts`` cost, each at the model that billed it; unknown (searches it has
        no price for, say): the budget cannot be kept."""
        costs = [price(u, m, p) for p, m, u in parts]
        if any(usd is None for usd in costs):
            raise BudgetExceeded(
                f"context {context!r} has a budget of {format_usd(limit)} but the cost of"
                f" {whose} is unknown: the budget cannot be kept",
                limit="usd",
                spent=None,
                estimate=ahead,
                maximum=limit,
            )
        return sum((usd for usd in costs if usd is not None), Decimal(0))

    open_usd = priced(unsettled, "its unsettled replies' attempts (interrupted, or under way)")
    paid_usd = paid.usd + open_usd
    attempts = priced(billed, "this reply's earlier attempts") if billed else Decimal(0)
    used_usd = paid_usd + attempts
    if used_usd + ahead > limit:
        by = _EARLIER.format(format_usd(attempts)) if billed else ""
        by += _UNSETTLED.format(format_usd(open_usd)) if open_usd else ""
        raise BudgetExceeded(
            f"context {context!r} would go over its budget of {format_usd(limit)}:"
            f" {format_usd(used_usd)} spent{by} + about {format_usd(ahead)} for this request",
            limit="usd",
            spent=used_usd,
            estimate=ahead,
            maximum=limit,
        )


def unsettled_parts(store: Store, context_id: str, own: str | None = None) -> list[Part]:
    """What the replies of ``context_id`` not settled yet (interrupted, or under way) were
    billed, as their checkpoints carry it, by the models that billed it (a checkpoint that
    names none: model None, its price unknown); reply ``own``'s left out (the reply asking,
    whose own count is given apart). Their usage joins the context's totals only once they
    are settled; it was paid for before.

    Both stores read it with the context's totals in one snapshot, without the replies'
    text (:func:`spending`); a store without ``budget_spent`` reads the replies' rows."""
    return spending(store, context_id, own, records=False)[1]


def spending(
    store: Store, context_id: str, own: str | None, *, records: bool
) -> tuple[Spending, list[Part]]:
    """What a budget check counts of a context: its totals (and its records, if
    ``records``) and its unsettled replies' parts (:func:`unsettled_parts`), read as of one
    moment where the store can (both stores: ``budget_spent``, one read transaction that
    never reads the replies' text), so that a reply claimed for a resume or settled
    meanwhile is counted once, never dropped."""
    read = getattr(store, "budget_spent", None)
    if read is not None:
        spent: Spending = read(context_id, own, records=records)
    else:
        found = {cp.id: cp for cp in store.active_replies(context_id)}
        found.update((cp.id, cp) for cp in store.checkpoints(context_id))
        spent = Spending(
            store.context_stats(context_id),
            store.records(context_id) if records else [],
            [
                (cp.usage, cp.metadata)
                for cp in found.values()
                if cp.usage is not None and (own is None or cp.reply_id != own)
            ],
        )
    parts: list[Part] = []
    for usage, metadata in spent.unsettled:
        listed = parts_of(metadata, usage)
        parts.extend(listed if listed is not None else [(None, None, usage)])
    return spent, parts
