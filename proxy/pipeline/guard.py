"""The guard interface: a step between authorization and the registry."""

from __future__ import annotations

from ..http import web
from ..upstream.forward import Answer
from .context import RequestContext


class Guard:
    """A step after authorization. `check` runs before the request is forwarded and returns
    an answer that ends the request (a refusal, or what the guard already knows) or None to
    go on; it may read the body whole (`ctx.body`) or hold a resource until the request
    ends (`ctx.hold`). `answered` sees the registry's answer before anything of it is sent:
    it may change the headers, read the body (`answer.read`), or return an answer to send
    instead. Both do nothing unless a guard overrides them; the handler calls only those."""

    async def check(self, ctx: RequestContext) -> web.StreamResponse | None:
        return None

    async def answered(self, ctx: RequestContext, answer: Answer) -> web.StreamResponse | None:
        return None

    @classmethod
    def checks(cls) -> bool:
        return cls.check is not Guard.check

    @classmethod
    def answers(cls) -> bool:
        return cls.answered is not Guard.answered
