"""The htpasswd authenticator: outcomes, the verified-credential cache, no user-name oracle,
and slow hashes kept off the event loop."""

from __future__ import annotations

import asyncio
import base64
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.authn import AuthResult, Outcome
from proxy.authn import htpasswd as htpasswd_module
from proxy.authn.cache import VerifiedCache
from proxy.authn.chain import Authentication, Authenticators, Denied
from proxy.authn.credentials import (
    DEFAULT_DUMMY_SAMPLE,
    PasswordHash,
    hash_password,
    parse_groups,
    parse_htpasswd,
)
from proxy.authn.htpasswd import HtpasswdAuthenticator, UserFiles
from proxy.authn.throttle import Throttle
from proxy.policy.identity import Identity


class RecordingExecutor(ThreadPoolExecutor):
    """Records which hashes were verified, and on which thread."""

    def __init__(self) -> None:
        super().__init__(max_workers=2)
        self.verified: list[PasswordHash] = []
        self.threads: list[str] = []

    def submit(self, fn, /, *args, **kwargs):  # type: ignore[no-untyped-def]
        def run():  # type: ignore[no-untyped-def]
            self.threads.append(threading.current_thread().name)
            return fn(*args, **kwargs)

        self.verified.append(fn.__self__)
        return super().submit(run)


def files(text: str, groups: str = "pusher: alice\nteam: alice bob\n") -> UserFiles:
    return UserFiles.build(parse_htpasswd(text, "htpasswd"), parse_groups(groups, "groups")[0])


def htpasswd(
    user_files: UserFiles, executor: RecordingExecutor, cache: VerifiedCache[bool] | None = None
) -> HtpasswdAuthenticator:
    return HtpasswdAuthenticator(user_files, cache or VerifiedCache(300, 100), executor)


@pytest.fixture
def executor() -> RecordingExecutor:
    pool = RecordingExecutor()
    yield pool
    pool.shutdown()


ALICE = f"alice:{hash_password('secret', cost=6)}\nbob:{hash_password('pw', cost=6)}\n"


async def test_outcomes_and_groups(executor: RecordingExecutor) -> None:
    authn = htpasswd(files(ALICE), executor)
    ok = await authn.authenticate("alice", "secret")
    assert ok.outcome is Outcome.OK and ok.groups == {"pusher", "team"}
    assert (await authn.authenticate("alice", "wrong")).outcome is Outcome.WRONG_PASSWORD
    assert (await authn.authenticate("carol", "secret")).outcome is Outcome.NO_SUCH_USER
    assert (await authn.authenticate("bob", "pw")).groups == {"team"}


async def test_an_htpasswd_users_groups_are_the_group_files_own_set(
    executor: RecordingExecutor,
) -> None:
    """Not a copy per request: the set's hash is computed once, and rule sets keep the merge
    of a caller's rules by it (a user in 1,000 groups)."""
    user_files = files(ALICE)
    setup = Authenticators((htpasswd(user_files, executor), Directory()), user_files)
    authn = Authentication(Throttle())
    for user, password in (("alice", "secret"), ("bob", "pw")):
        who = await authn.identify(basic(user, password), None, setup)
        assert isinstance(who, Identity) and who.groups is user_files.groups_of(user)


async def test_hashing_runs_off_the_event_loop(executor: RecordingExecutor) -> None:
    authn = htpasswd(files(ALICE), executor)
    await authn.authenticate("alice", "secret")
    assert executor.threads and threading.main_thread().name not in executor.threads


async def test_unknown_user_costs_the_same_hash_as_a_wrong_password(
    executor: RecordingExecutor,
) -> None:
    user_files = files(ALICE)
    authn = htpasswd(user_files, executor)
    await authn.authenticate("alice", "wrong")
    await authn.authenticate("mallory", "wrong")
    real, dummy = executor.verified
    assert dummy is user_files.dummy
    # Same scheme and cost ($2b$06 vs $2y$06): the same work, so no timing oracle.
    assert (dummy.scheme, dummy.value[4:7]) == (real.scheme, real.value[4:7])


class Directory:
    """A password backend after htpasswd, as LDAP is: it has one user, dana."""

    def __init__(self) -> None:
        self.password = "dana-pw"

    async def authenticate(self, user: str, password: str, proven: bool = False) -> AuthResult:
        if user != "dana":
            return AuthResult(Outcome.NO_SUCH_USER)
        return AuthResult(Outcome.OK if password == self.password else Outcome.WRONG_PASSWORD)

    def close(self) -> None:
        pass


def basic(user: str, password: str) -> list[str]:
    return ["Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()]


async def test_a_later_backends_user_pays_one_decoy_hash_not_one_per_request(
    executor: RecordingExecutor,
) -> None:
    user_files = files(ALICE)
    setup = Authenticators((htpasswd(user_files, executor), Directory()), user_files)
    authn = Authentication(Throttle())
    for _ in range(5):
        assert isinstance(await authn.identify(basic("dana", "dana-pw"), None, setup), Identity)
    assert executor.verified == [user_files.dummy]  # before the first login only
    # Credentials not accepted lately still cost it, every time: nothing tells who exists.
    for user, password in (("dana", "guess"), ("mallory", "pw"), ("mallory", "pw")):
        assert isinstance(await authn.identify(basic(user, password), None, setup), Denied)
    assert executor.verified == [user_files.dummy] * 4


async def test_credentials_refused_again_pay_the_decoy_again(executor: RecordingExecutor) -> None:
    user_files = files(ALICE)
    directory = Directory()
    setup = Authenticators((htpasswd(user_files, executor), directory), user_files)
    authn = Authentication(Throttle())
    assert isinstance(await authn.identify(basic("dana", "dana-pw"), None, setup), Identity)
    directory.password = "changed"  # the directory stops taking the old password
    for _ in range(2):
        assert isinstance(await authn.identify(basic("dana", "dana-pw"), None, setup), Denied)
    # The first refusal was spared the decoy (accepted lately); the next one is not.
    assert executor.verified == [user_files.dummy] * 2


async def test_cache_skips_rehash_and_follows_password_changes(
    executor: RecordingExecutor,
) -> None:
    cache: VerifiedCache[bool] = VerifiedCache(300, 100)
    authn = htpasswd(files(ALICE), executor, cache)
    for _ in range(5):
        assert (await authn.authenticate("alice", "secret")).outcome is Outcome.OK
    assert len(executor.verified) == 1
    # A wrong password is never answered from the cache.
    assert (await authn.authenticate("alice", "secret2")).outcome is Outcome.WRONG_PASSWORD
    assert len(executor.verified) == 2
    # The password changes in the file (a reload: a new snapshot, the same cache): the old
    # one stops working at once.
    authn = htpasswd(files(f"alice:{hash_password('new', cost=4)}\n"), executor, cache)
    assert (await authn.authenticate("alice", "secret")).outcome is Outcome.WRONG_PASSWORD
    assert (await authn.authenticate("alice", "new")).outcome is Outcome.OK
    # The user is removed: no cached success survives.
    authn = htpasswd(files("bob:" + hash_password("pw", cost=4) + "\n"), executor, cache)
    assert (await authn.authenticate("alice", "new")).outcome is Outcome.NO_SUCH_USER


async def test_concurrent_identical_checks_share_one_hash(executor: RecordingExecutor) -> None:
    authn = htpasswd(files(ALICE), executor)
    results = await asyncio.gather(*(authn.authenticate("alice", "secret") for _ in range(20)))
    assert all(r.outcome is Outcome.OK for r in results)
    assert len(executor.verified) == 1


def test_reload_keeps_the_dummy_when_scheme_and_cost_stay() -> None:
    first = files(ALICE)
    again = UserFiles.build(first.htpasswd, first.groups, first.dummy)
    assert again.dummy is first.dummy  # for schemes whose decoy is a slow hash: not made again
    cheaper = parse_htpasswd(f"carol:{hash_password('x', cost=4)}\n", "htpasswd")
    changed = UserFiles.build(cheaper, {}, first.dummy)
    assert changed.dummy.cost == 4 and changed.dummy is not first.dummy


@given(
    st.dictionaries(
        st.sampled_from(["pusher", "team", "ops", "ci", "all"]),
        st.frozensets(st.sampled_from(["alice", "bob", "carol", "dave", "erin"])),
    )
)
def test_memberships_invert_the_group_file(groups: dict[str, frozenset[str]]) -> None:
    built = UserFiles.build(parse_htpasswd("", "h"), groups, DEFAULT_DUMMY_SAMPLE)
    for user in ("alice", "bob", "carol", "dave", "erin", "nobody"):
        assert built.groups_of(user) == {g for g, members in groups.items() if user in members}


def test_the_dummy_is_made_by_the_authenticator_not_by_loading(
    monkeypatch: pytest.MonkeyPatch, executor: RecordingExecutor
) -> None:
    """Loading the files (`regproxy check`) makes no slow hash; the authenticator, built off
    the event loop, makes it before its first request."""
    made: list[PasswordHash] = []

    def dummy_like(sample: PasswordHash) -> PasswordHash:
        made.append(sample)
        return sample

    monkeypatch.setattr(htpasswd_module, "dummy_like", dummy_like)
    user_files = files(ALICE)
    assert made == []
    htpasswd(user_files, executor)
    assert len(made) == 1 and user_files.dummy is made[0]
