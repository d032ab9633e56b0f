"""The Redis users backend over a worker's records: outcomes, and the decoy hash an unknown
or unusable user costs unless the chain says the credentials were accepted lately."""

from __future__ import annotations

import pytest

from proxy.authn import Outcome
from proxy.authn.cache import VerifiedCache
from proxy.authn.credentials import PasswordHash, hash_password
from proxy.authn.redis_users import RedisAuthenticator, UserRecord, make_dummy
from tests.unit.test_htpasswd import RecordingExecutor

ANN = UserRecord(PasswordHash("bcrypt", hash_password("ann-pw", cost=4)), frozenset({"team"}))
RECORDS = {"ann": ANN, "broken": UserRecord(None, problem="unknown hash scheme")}


class Records:
    """The records a worker has read from Redis (RedisUsers' lookup, without Redis)."""

    async def record(self, user: str) -> UserRecord | None:
        return RECORDS.get(user)


@pytest.fixture
def hashing() -> RecordingExecutor:
    pool = RecordingExecutor()
    yield pool
    pool.shutdown()


@pytest.mark.parametrize(
    ("user", "outcome"), [("nobody", Outcome.NO_SUCH_USER), ("broken", Outcome.WRONG_PASSWORD)]
)
async def test_no_usable_hash_costs_a_decoy_unless_proven(
    hashing: RecordingExecutor, user: str, outcome: Outcome
) -> None:
    dummy = make_dummy()
    backend = RedisAuthenticator(Records(), VerifiedCache(300, 100), hashing, dummy)  # type: ignore[arg-type]
    assert (await backend.authenticate(user, "pw")).outcome is outcome
    assert hashing.verified == [dummy]
    # Accepted lately (by a backend before this one): the same answer, no decoy.
    assert (await backend.authenticate(user, "pw", proven=True)).outcome is outcome
    assert hashing.verified == [dummy]


async def test_a_known_user_is_checked_proven_or_not(hashing: RecordingExecutor) -> None:
    backend = RedisAuthenticator(Records(), VerifiedCache(300, 100), hashing, make_dummy())  # type: ignore[arg-type]
    assert (
        await backend.authenticate("ann", "wrong", proven=True)
    ).outcome is Outcome.WRONG_PASSWORD
    ok = await backend.authenticate("ann", "ann-pw", proven=True)
    assert (ok.outcome, ok.groups) == (Outcome.OK, {"team"})
    assert hashing.verified == [ANN.password, ANN.password]
