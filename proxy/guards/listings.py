"""The catalog's listings kept fresh: a push that adds a repository drops its upstream's
listing (`proxy.upstream.catalog.Listings`) in every worker, and with a shared store in
every replica, before the push's answer reaches its client: a client that lists the
catalog after pushing sees its repository."""

from __future__ import annotations

from ..http import web
from ..pipeline.context import RequestContext
from ..pipeline.guard import Guard
from ..state.events import Event, RepositoryPushed
from ..state.store import Store
from ..upstream.catalog import Listings
from ..upstream.forward import Answer


class NewRepositories(Guard):
    """Watches manifest pushes' answers (one per worker)."""

    def __init__(self, store: Store, listings: Listings) -> None:
        self._store = store
        self._listings = listings
        store.subscribe(self._apply)

    def _apply(self, event: Event, _age: float) -> None:
        if isinstance(event, RepositoryPushed):
            self._listings.drop(event.upstream, event.repository)

    async def answered(self, ctx: RequestContext, answer: Answer) -> web.StreamResponse | None:
        operation, route = ctx.operation, ctx.route
        assert operation is not None and route is not None
        pushed = operation.kind == "manifest" and operation.action == "push"
        if pushed and operation.repository is not None and 200 <= answer.status < 300:
            self._listings.drop(route.upstream, operation.repository)
            self._store.publish(RepositoryPushed(route.upstream, operation.repository))
        return None
