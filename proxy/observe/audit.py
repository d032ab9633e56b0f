"""The audit log: one JSON line per push or delete decision, allowed or refused, per request
a break-glass grant allowed, and per request the quarantine refused."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

from ..http.routes import Operation
from ..policy.grants import Grant
from ..policy.identity import Identity
from ..policy.quarantine import Refused
from ..policy.rules import Verdict

audit_log = logging.getLogger("regproxy.audit")


def audit(who: Identity, operation: Operation, status: int, verdict: Verdict | None) -> None:
    """Record a push or delete decision, and any request a grant allowed, with who decided."""
    grant = verdict.decision.grant if verdict is not None else None
    mount_grant = verdict.mount_grant if verdict is not None else None
    if operation.action not in ("push", "delete") and grant is None and mount_grant is None:
        return
    entry = _stamp(who) | {
        "action": operation.action,
        "repository": operation.repository,
        "reference": operation.reference,
        "status": status,
    }
    entry |= _acting(who)
    if grant is not None:
        entry["grant"] = grant.record()
    if mount_grant is not None:
        entry["mount_grant"] = mount_grant.record()
    audit_log.info(json.dumps(entry))


def audit_quarantine(who: Identity, operation: Operation, method: str, refused: Refused) -> None:
    """Record a request the quarantine refused: who asked for what, and the entry."""
    entry = _stamp(who) | {
        "action": operation.action,
        "method": method,
        "repository": operation.repository,
        "reference": operation.reference,
        "status": 403,
    }
    entry |= _acting(who) | {"quarantine": refused.entry.record() | {"how": refused.how or None}}
    audit_log.info(json.dumps(entry))


def audit_token(who: Identity, scope: str, grant: Grant) -> None:
    """Record a token (token server mode) holding a scope a grant gave: the registry, not the
    proxy, sees the requests made with it."""
    entry = _stamp(who) | {"action": "token", "scope": scope} | _acting(who)
    audit_log.info(json.dumps(entry | {"grant": grant.record()}))


def _stamp(who: Identity) -> dict[str, object]:
    """When, and who asked from where."""
    return {
        "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "client": str(who.address) if who.address else None,
        "user": who.user,
    }


def _acting(who: Identity) -> dict[str, object]:
    """A robot and its owner, or a workload token's issuer and subject."""
    entry: dict[str, object] = {}
    if who.robot is not None:
        entry |= {"robot": who.robot.name, "owner": who.robot.owner}
    if who.issuer is not None:
        entry |= {"issuer": who.issuer, "subject": who.claims.get("sub")}
    return entry
