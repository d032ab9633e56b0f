"""The audit log: one JSON line per push or delete decision, allowed or refused."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

from ..http.routes import Operation
from ..policy.identity import Identity

audit_log = logging.getLogger("regproxy.audit")


def audit(who: Identity, operation: Operation, status: int) -> None:
    """Record a push or delete decision (other actions are not audited). A robot's line names
    the robot and its owner; a workload token's, its issuer and subject."""
    if operation.action not in ("push", "delete"):
        return
    entry: dict[str, object] = {
        "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "client": str(who.address) if who.address else None,
        "user": who.user,
        "action": operation.action,
        "repository": operation.repository,
        "reference": operation.reference,
        "status": status,
    }
    if who.robot is not None:
        entry |= {"robot": who.robot.name, "owner": who.robot.owner}
    if who.issuer is not None:
        entry |= {"issuer": who.issuer, "subject": who.claims.get("sub")}
    audit_log.info(json.dumps(entry))
