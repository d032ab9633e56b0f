"""Rate limits: budgets per identity, action class and window (`rate_limits:`), Docker Hub's
way: a request over its budget gets 429 `TOOMANYREQUESTS` with `Retry-After` (when its
window ends), and every request of a limited action class carries `RateLimit-Limit` and
`RateLimit-Remaining` (`100;w=21600`).

Which budget applies and what a request counts is pure (`proxy.policy.ratelimits`); the counts
are the store's (`Store.used`, `Store.count`: this process's at once, the other workers' as
they are told, the replicas' as of the last background sync), so an allowed request never
waits for Redis. A manifest GET or PUT counts 1 when it is let through and is given back when
the registry refuses it (4xx, 5xx); blob bytes are counted as they were sent, when the request
ends, and refuse the next request once over.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

from ..core.windows import window_end
from ..http import web
from ..http.errors import error_response
from ..observe import metrics
from ..pipeline.context import RequestContext
from ..pipeline.guard import Guard
from ..policy.ratelimits import Applies, Charge, budget_for, headers, measure, refusal
from ..state.store import Store
from ..upstream.forward import Answer


class RateLimits(Guard):
    """Spends and checks budgets through the store's counts (one guard per worker)."""

    def __init__(self, store: Store, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._clock = clock  # the wall clock: windows start at multiples of `per` since the epoch

    async def check(self, ctx: RequestContext) -> web.StreamResponse | None:
        limits = ctx.config.rate_limits
        if limits is None:
            return None
        assert ctx.operation is not None and ctx.identity is not None
        spends = measure(ctx.request.method, ctx.operation)
        if spends is None:
            return None
        applies = budget_for(limits, ctx.identity, ctx.origin.address, spends.action)
        if applies is None:
            return None
        budget, now = applies.budget, self._clock()
        assert budget.limit is not None  # budget_for: None when unlimited
        expires = window_end(now, budget.per)
        self._store.sync()  # the other workers' counts that have arrived, applied first
        if spends.refusable and self._store.used(applies.key, expires) >= budget.limit:
            metrics.RECORD.rate_limited(budget.label)
            message, refused = refusal(applies, expires, now)
            return error_response(429, "TOOMANYREQUESTS", message, refused)
        if spends.amount:
            self._store.count(applies.key, expires, spends.amount)
            # Given back at the end unless the registry's answer is sent: a registry that
            # refuses it, fails, or a guard before this one refusing its answer.
            ctx.defer(lambda: self._give_back(ctx))
        ctx.charge = Charge(applies, expires, spends.amount)
        if spends.action == "blob_bytes":  # as sent, whatever the answer claimed
            ctx.defer(lambda: self._sent(ctx, applies))
        return None

    async def answered(self, ctx: RequestContext, answer: Answer) -> web.StreamResponse | None:
        charge = ctx.charge
        if charge is None:
            return None
        key, budget = charge.applies.key, charge.applies.budget
        refused = charge.amount if answer.status >= 400 else 0  # by the registry: not spent
        if answer.status < 400:
            ctx.charge = replace(charge, amount=0)  # spent: nothing to give back
        assert budget.limit is not None
        left = max(0, budget.limit - self._store.used(key, charge.expires) + refused)
        answer.headers.update(headers(budget, left))
        return None

    def _sent(self, ctx: RequestContext, applies: Applies) -> None:
        # In the window the transfer ends in: one begun in a window's last second must not
        # be counted in a window about to end (a whole budget again at once).
        expires = window_end(self._clock(), applies.budget.per)
        self._store.count(applies.key, expires, ctx.sent or 0)

    def _give_back(self, ctx: RequestContext) -> None:
        charge = ctx.charge
        if charge is not None and charge.amount:
            self._store.count(charge.applies.key, charge.expires, -charge.amount)
