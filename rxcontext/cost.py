"""What replies cost, priced by the maintained ``genai-prices`` table (``rxcontext[prices]``).

Costs are computed when they are read, from what every stored reply says about itself
(its MODEL_RESP's ``model``, ``provider`` and ``usage``; see :func:`.persist.reply_metadata`)
and the time it was stored, with the prices of the installed ``genai-prices``: nothing
money-related is written to the database, so a price correction (a new ``genai-prices``)
corrects every cost shown, and a database needs no migration. A summariser's reply is
stored too, dead, accepted or not (:func:`.summarize.summarizer_draft`), so a summary's
request is priced like any other; a discarded reply leaves a dead record of what its
attempt was billed (:func:`.store.base.discarded_draft`), priced from the usage and model
its checkpoint names, as a kept partial reply is. A reply resumed on another model than
its cut attempts' says what each model billed (:mod:`rxcontext.usage_by_model`), and each
part is priced by its own model. A reply whose model the table does
not know (or that says no model, or no usage) has an unknown cost: ``None``, shown as
unknown, never guessed. A context's total counts the replies it could price and
says how many it could not (:class:`ContextCost`), so a total is never smaller than it says.

Prompt-cache tokens are priced apart (reads cheaper, Anthropic's writes dearer), a
Gemini reply's thought tokens are priced as the output they are billed as, and server-side
web searches (``Usage.web_search_requests``: Anthropic's web searches, OpenAI's
``web_search_call`` items, Gemini's Google Search grounding) at the table's price per
search. A reply that searched on a model (or at a date) the table has no search price for
has an unknown cost, not the price of its tokens alone.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from .chunks import Usage
from .errors import MissingDependency
from .records import Record, RecordType
from .usage_by_model import USAGE_BY_MODEL, parse

__all__ = ["ContextCost", "available", "context_cost", "format_usd", "price", "reply_cost"]

# rxcontext's provider names (a model's ``name`` prefix) -> genai-prices provider ids.
_PROVIDERS = {
    "openai": "openai",
    "openai-responses": "openai",
    "anthropic": "anthropic",
    "gemini": "google",
}
# Providers whose ``output_tokens`` leave the (billed) reasoning tokens out.
_THOUGHTS_APART = frozenset({"gemini"})


def available() -> bool:
    """Whether ``genai-prices`` is installed (``pip install 'rxcontext[prices]'``)."""
    try:
        import genai_prices  # noqa: F401
    except ImportError:
        return False
    return True


def _prices() -> Any:
    try:
        import genai_prices
    except ImportError as exc:
        raise MissingDependency("genai-prices", "prices", "needed to price replies") from exc
    return genai_prices


def price(
    usage: Usage, model: str | None, provider: str | None, when: datetime | None = None
) -> Decimal | None:
    """The cost in US dollars of ``usage`` on ``provider``'s ``model`` at ``when`` (None:
    now), or None when ``genai-prices`` does not know the model (or provider).

    ``provider`` is rxcontext's name (``"openai"``, ``"anthropic"``, ``"gemini"``).
    Raises :class:`~rxcontext.MissingDependency` without ``genai-prices``.
    """
    prices = _prices()
    provider_id = _PROVIDERS.get(provider or "")
    if not model or provider_id is None:
        return None
    output = usage.output_tokens
    if provider in _THOUGHTS_APART:
        output += usage.reasoning_tokens
    counted = prices.Usage(
        input_tokens=usage.input_tokens,
        output_tokens=output,
        cache_read_tokens=usage.cached_tokens,
        cache_write_tokens=usage.cache_write_tokens,
    )
    if usage.web_search_requests:
        # Billed per search, on top of the tokens (the table's web_searches_kcount);
        # only when there were any, so a reply that did not search is priced as ever.
        counted.web_searches = usage.web_search_requests
    try:
        result = prices.calc_price(
            counted, model, provider_id=provider_id, genai_request_timestamp=when
        )
    except LookupError:
        return None
    if (
        usage.web_search_requests
        and getattr(result.model_price, "web_searches_kcount", None) is None
    ):
        # genai-prices prices nothing it has no price for: searches the table cannot price
        # (a model, or a date, it has no search price for) would leave a tokens-only total
        # that looks whole. Unknown instead, as for a model it does not know.
        return None
    total: Decimal = result.total_price
    return total


def reply_cost(record: Record) -> Decimal | None:
    """The cost of the reply ``record`` (a MODEL_RESP, or a TOOL_CALL that carries its
    round's metadata) in US dollars; None when unknown (no model, no usage, a model the
    price table does not know)."""
    meta = record.metadata
    if USAGE_BY_MODEL in meta:  # billed by more than one model (a resume on another)
        return _price_parts(meta[USAGE_BY_MODEL], record)
    usage = meta.get("usage")
    model, provider = meta.get("model"), meta.get("provider")
    if (
        not isinstance(model, str)
        or not isinstance(provider, str | None)
        or Usage.problem(usage) is not None  # not written by rxcontext: unknown, not a crash
    ):
        return None
    return price(Usage.from_dict(usage), model, provider, record.timestamp)  # type: ignore[arg-type]


def _price_parts(listed: object, record: Record) -> Decimal | None:
    """Each model's part of a reply's usage priced by that model, summed; None if one is
    unknown (or the parts are not what rxcontext writes)."""
    parts = parse(listed)
    if parts is None:
        return None
    total = Decimal(0)
    for provider, model, usage in parts:
        cost = price(usage, model, provider, record.timestamp)
        if cost is None:
            return None
        total += cost
    return total


@dataclass(frozen=True, slots=True)
class ContextCost:
    """The cost of a context's replies: ``usd`` over the ``priced`` ones, and how many
    replies could not be priced (``unpriced``). ``usd`` is the whole cost only when
    ``complete``."""

    usd: Decimal
    priced: int
    unpriced: int

    @property
    def complete(self) -> bool:
        """Every reply was priced (vacuously true without replies)."""
        return self.unpriced == 0

    def describe(self) -> str:
        """``$0.0123``; ``≥$0.0123`` when some replies are unpriced; ``unknown`` when none
        was priced; ``-`` without replies."""
        if not self.priced:
            return "unknown" if self.unpriced else "-"
        amount = format_usd(self.usd)
        return amount if self.complete else f"≥{amount}"


def _replies(records: Iterable[Record]) -> Iterable[Record]:
    for record in records:
        if record.inherited:  # copied by a clone or fork: billed to the context it came from
            continue
        if record.type in (RecordType.MODEL_RESP, RecordType.TOOL_CALL) and (
            "usage" in record.metadata and "model" in record.metadata
        ):
            yield record
        elif record.type is RecordType.MODEL_RESP:
            # Stored without metadata (older rxcontext), or kept partial: a cut reply was
            # billed, its usage said or not (OpenAI sends it last). Unknown, never free.
            yield record


def context_cost(records: Iterable[Record]) -> ContextCost:
    """The cost of the replies among ``records`` (pass all of a context's records, dead
    ones too: summarised replies were paid for as well). Records a clone or fork copied
    (``Record.inherited``) are left out: their replies were billed to the context they
    came from, as the copy's token totals say."""
    usd, priced, unpriced = Decimal(0), 0, 0
    for record in _replies(records):
        cost = reply_cost(record)
        if cost is None:
            unpriced += 1
        else:
            usd += cost
            priced += 1
    return ContextCost(usd, priced, unpriced)


def format_usd(usd: Decimal | None) -> str:
    """Dollars for a table: ``$1,234.50``, ``$0.0123``, ``$0.000049`` (two significant
    digits below a cent), ``<$0.00000001``; ``unknown`` for None."""
    if usd is None:
        return "unknown"
    if usd == 0:
        return "$0"
    if usd >= 1:
        return f"${usd:,.2f}"
    if usd >= Decimal("0.01"):
        return f"${usd:.4f}"
    if usd < Decimal("0.00000001"):
        return "<$0.00000001"
    places = -usd.adjusted() + 1
    return f"${usd.quantize(Decimal(1).scaleb(-places)):f}"
