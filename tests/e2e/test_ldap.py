"""The LDAP backend against a real OpenLDAP slapd: search-then-bind and direct bind, groups from
memberOf and from group searches, injection attempts, LDAPS/StartTLS verification, a server
stopped, hung and restarted mid-run, the cache, and concurrent logins sharing one bind."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from devtools.net import free_port
from devtools.slapd import (
    GROUPS,
    PASSWORDS,
    PEOPLE,
    POSIX_GROUPS,
    SERVICE_DN,
    SERVICE_PASSWORD,
    Slapd,
    other_ca,
    running_slapd,
)
from proxy.authn import AuthResult, BackendUnavailable, Outcome
from proxy.authn.ldap import LdapAuthenticator
from proxy.authn.ldap_settings import LdapSettings, parse_ldap_settings

pytestmark = pytest.mark.e2e

ALICE_DN = f"uid=alice,{PEOPLE}"
TEMPLATE = f"uid={{user}},{PEOPLE}"
SERVICE = {"bind_dn": SERVICE_DN, "bind_password": SERVICE_PASSWORD}
SEARCH = {**SERVICE, "user_base": PEOPLE}
MEMBER_OF = {"member_of_attribute": "memberOf", "group_base": GROUPS}


def settings(**values: Any) -> LdapSettings:
    """Settings through the real parser: a test cannot build what the config would refuse."""
    parsed, problems = parse_ldap_settings(values, "test.yaml", {k: 1 for k in values})
    assert parsed is not None, [str(p) for p in problems]
    return parsed


Factory = Callable[..., LdapAuthenticator]


@pytest.fixture(scope="module")
def slapd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Slapd]:
    """One slapd for the tests that leave it running and unchanged."""
    with running_slapd(tmp_path_factory.mktemp("slapd")) as server:
        yield server


@pytest.fixture
def own_slapd(tmp_path: Path) -> Iterator[Slapd]:
    """A slapd of the test's own, to stop, pause and count binds on."""
    with running_slapd(tmp_path / "slapd") as server:
        yield server


@pytest.fixture
async def backend() -> AsyncIterator[Factory]:
    """`backend(url=..., ...)` -> an LdapAuthenticator, closed after the test."""
    made: list[LdapAuthenticator] = []

    def make(clock: Callable[[], float] = time.monotonic, **values: Any) -> LdapAuthenticator:
        authenticator = LdapAuthenticator(settings(**values), clock)
        made.append(authenticator)
        return authenticator

    yield make
    for authenticator in made:
        authenticator.close()


def ok(*groups: str) -> AuthResult:
    return AuthResult(Outcome.OK, frozenset(groups))


WRONG = AuthResult(Outcome.WRONG_PASSWORD)
UNKNOWN = AuthResult(Outcome.NO_SUCH_USER)


# -- logins and groups ---------------------------------------------------------------------------


async def test_search_then_bind_with_groups_from_member_of(slapd: Slapd, backend: Factory) -> None:
    ldap = backend(url=slapd.url, **SEARCH, **MEMBER_OF)
    assert await ldap.authenticate("alice", PASSWORDS["alice"]) == ok("pusher", "developers")
    assert await ldap.authenticate("bob", PASSWORDS["bob"]) == ok("developers", "release team")
    # carol's only group is cn=pusher,ou=otherapp: outside group_base, so not "pusher".
    assert await ldap.authenticate("carol", PASSWORDS["carol"]) == ok()
    assert await ldap.authenticate("alice", "wrong") == WRONG
    assert await ldap.authenticate("alice", PASSWORDS["bob"]) == WRONG
    assert await ldap.authenticate("mallory", "anything") == UNKNOWN


async def test_member_of_without_group_base_takes_every_group(
    slapd: Slapd, backend: Factory
) -> None:
    ldap = backend(url=slapd.url, **SEARCH, member_of_attribute="memberOf")
    assert await ldap.authenticate("carol", PASSWORDS["carol"]) == ok("pusher")


async def test_groups_from_a_group_search(slapd: Slapd, backend: Factory) -> None:
    by_dn = backend(url=slapd.url, **SEARCH, group_base=GROUPS, group_filter="(member={dn})")
    assert await by_dn.authenticate("alice", PASSWORDS["alice"]) == ok("pusher", "developers")
    assert await by_dn.authenticate("bob", PASSWORDS["bob"]) == ok("developers", "release team")
    posix = backend(
        url=slapd.url, **SEARCH, group_base=POSIX_GROUPS, group_filter="(memberUid={user})"
    )
    assert await posix.authenticate("alice", PASSWORDS["alice"]) == ok("staff")
    assert await posix.authenticate("bob", PASSWORDS["bob"]) == ok("ops")
    both = backend(
        url=slapd.url,
        **SEARCH,
        member_of_attribute="memberOf",
        group_base="dc=example,dc=org",
        group_filter="(memberUid={user})",
    )
    # memberOf (any group under the base, otherapp's too) and the posix search, together.
    assert await both.authenticate("carol", PASSWORDS["carol"]) == ok("pusher", "staff")


async def test_direct_bind_reads_groups_as_the_user(slapd: Slapd, backend: Factory) -> None:
    ldap = backend(url=slapd.url, user_dn_template=TEMPLATE, **MEMBER_OF)
    assert await ldap.authenticate("alice", PASSWORDS["alice"]) == ok("pusher", "developers")
    assert await ldap.authenticate("alice", "wrong") == WRONG
    # Without a service account an unknown user cannot be told from a wrong password.
    assert await ldap.authenticate("mallory", "anything") == WRONG
    posix = backend(url=slapd.url, user_dn_template=TEMPLATE, group_base=POSIX_GROUPS,
                    group_filter="(memberUid={user})")  # fmt: skip
    assert await posix.authenticate("carol", PASSWORDS["carol"]) == ok("staff")


async def test_direct_bind_with_a_service_account_knows_unknown_users(
    slapd: Slapd, backend: Factory
) -> None:
    ldap = backend(url=slapd.url, user_dn_template=TEMPLATE, **SERVICE, group_base=GROUPS,
                   group_filter="(member={dn})")  # fmt: skip
    assert await ldap.authenticate("bob", PASSWORDS["bob"]) == ok("developers", "release team")
    assert await ldap.authenticate("bob", "wrong") == WRONG
    assert await ldap.authenticate("mallory", "anything") == UNKNOWN


async def test_empty_password_is_refused_without_asking_the_server(
    own_slapd: Slapd, backend: Factory
) -> None:
    # The server itself would accept it (an "unauthenticated bind": anonymous, success) ...
    accepted = own_slapd.whoami(ALICE_DN, "")
    assert accepted.returncode == 0 and "anonymous" in accepted.stdout
    before = own_slapd.binds()
    for ldap in (
        backend(url=own_slapd.url, **SEARCH),
        backend(url=own_slapd.url, user_dn_template=TEMPLATE),
    ):
        assert await ldap.authenticate("alice", "") == WRONG
    assert own_slapd.binds() == before  # ... but it is never asked


FULL_WIDTH_ALICE = "\uff41\uff4c\uff49\uff43\uff45"


@pytest.mark.parametrize("spelling", ["ALICE", "Alice", FULL_WIDTH_ALICE])
async def test_names_must_be_spelled_as_in_the_directory(
    slapd: Slapd, backend: Factory, spelling: str
) -> None:
    # slapd finds alice under other spellings (full-width letters too: Unicode folding), and
    # the ACL would not know them as alice: exact_user_name refuses them.
    loose_search = backend(url=slapd.url, **SEARCH, **MEMBER_OF, exact_user_name=False)
    loose_bind = backend(url=slapd.url, user_dn_template=TEMPLATE, exact_user_name=False)
    for loose in (loose_search, loose_bind):
        assert (await loose.authenticate(spelling, PASSWORDS["alice"])).outcome is Outcome.OK
    for ldap in (
        backend(url=slapd.url, **SEARCH, **MEMBER_OF),
        backend(url=slapd.url, user_dn_template=TEMPLATE),
        backend(url=slapd.url, user_dn_template=TEMPLATE, **SERVICE, **MEMBER_OF),
    ):
        assert await ldap.authenticate(spelling, PASSWORDS["alice"]) == UNKNOWN
        assert await ldap.authenticate("alice", PASSWORDS["alice"]) != UNKNOWN


async def test_several_entries_for_one_name_are_refused(slapd: Slapd, backend: Factory) -> None:
    # uid=twin exists twice under ou=people: which entry the password is for is unknown.
    ldap = backend(url=slapd.url, **SEARCH)
    assert await ldap.authenticate("twin", PASSWORDS["twin"]) == WRONG


async def test_passwords_go_as_sent(slapd: Slapd, backend: Factory) -> None:
    ldap = backend(url=slapd.url, **SEARCH)
    assert PASSWORDS["bob"] == "b0b:with colon"
    assert await ldap.authenticate("bob", PASSWORDS["bob"]) == ok()
    assert await ldap.authenticate("bob", PASSWORDS["bob"] + " ") == WRONG
    # Bytes that are not UTF-8 (kept as surrogate escapes by the Basic parser) go as bytes.
    assert await ldap.authenticate("bob", "b0b\udcff") == WRONG


# -- injection -----------------------------------------------------------------------------------

INJECTIONS = [
    "*",
    "a*",
    "alice)(uid=*",
    "*)(|(objectClass=*",
    "alice)(|(uid=*",
    "admin)(|(uid=*",
    "alice\x00",
    "alice\\00",
    "alice\\2a",
    "(uid=alice)",
    " alice",
    "alice ",
    "alice\n",
    "alice,ou=admins",
    "root,ou=admins",
    "alice+uid=root",
    "alice\udcff",
]


@pytest.mark.parametrize("user", INJECTIONS)
async def test_injection_in_the_user_name_authenticates_nobody(
    slapd: Slapd, backend: Factory, user: str
) -> None:
    searching = backend(url=slapd.url, **SEARCH)
    binding = backend(url=slapd.url, user_dn_template=TEMPLATE, **SERVICE)
    binding_as_user = backend(url=slapd.url, user_dn_template=TEMPLATE)
    for password in (PASSWORDS["alice"], PASSWORDS["root"], "x"):
        for ldap in (searching, binding, binding_as_user):
            result = await ldap.authenticate(user, password)
            assert result.outcome is not Outcome.OK, (user, password, ldap.settings)


async def test_the_dn_injection_would_have_worked_unescaped(slapd: Slapd) -> None:
    # The decoy is real: the DN an unescaped template would build binds with root's password.
    injected = TEMPLATE.replace("{user}", "root,ou=admins")
    assert slapd.whoami(injected, PASSWORDS["root"]).returncode == 0


async def test_filters_reach_the_server_escaped(own_slapd: Slapd, backend: Factory) -> None:
    ldap = backend(url=own_slapd.url, **SEARCH)
    assert await ldap.authenticate("*)(|(objectClass=*", "x") == UNKNOWN
    log = own_slapd.log_text(since_start=True)
    # (slapd logs the filter normalized: lower case)
    assert 'filter="(uid=\\2a\\29\\28|\\28objectclass=\\2a)"' in log.lower()


# -- TLS -----------------------------------------------------------------------------------------


async def test_ldaps_verifies_the_certificate(
    slapd: Slapd, backend: Factory, tmp_path: Path
) -> None:
    good = backend(url=slapd.ldaps_url, ca_file=str(slapd.ca_file), **SEARCH, **MEMBER_OF)
    assert await good.authenticate("alice", PASSWORDS["alice"]) == ok("pusher", "developers")
    assert await good.authenticate("alice", "wrong") == WRONG
    assert any("ssf=256" in line or "ssf=128" in line for line in slapd.bind_lines(ALICE_DN))

    wrong_ca = backend(url=slapd.ldaps_url, ca_file=str(other_ca(tmp_path)), **SEARCH)
    system_ca = backend(url=slapd.ldaps_url, **SEARCH)  # the test CA is not a system CA
    wrong_name = backend(
        url=f"ldaps://127.0.0.1:{slapd.tls_port}", ca_file=str(slapd.ca_file), **SEARCH
    )  # the certificate is for localhost only
    for ldap in (wrong_ca, system_ca, wrong_name):
        with pytest.raises(BackendUnavailable, match="certificate"):
            await ldap.authenticate("alice", PASSWORDS["alice"])


async def test_start_tls_verifies_the_certificate(
    own_slapd: Slapd, backend: Factory, tmp_path: Path
) -> None:
    url = own_slapd.start_tls_url
    good = backend(url=url, start_tls=True, ca_file=str(own_slapd.ca_file), **SEARCH)
    assert await good.authenticate("alice", PASSWORDS["alice"]) == ok()
    lines = own_slapd.bind_lines(ALICE_DN)
    assert lines and all(" ssf=0" not in line for line in lines), lines  # encrypted
    service = own_slapd.bind_lines(SERVICE_DN)
    assert service and all(" ssf=0" not in line for line in service), service

    wrong_ca = backend(url=url, start_tls=True, ca_file=str(other_ca(tmp_path)), **SEARCH)
    wrong_name = backend(url=own_slapd.url, start_tls=True, ca_file=str(own_slapd.ca_file),
                         **SEARCH)  # fmt: skip
    before = own_slapd.binds(ALICE_DN)
    for ldap in (wrong_ca, wrong_name):
        with pytest.raises(BackendUnavailable, match="certificate"):
            await ldap.authenticate("alice", PASSWORDS["alice"])
    assert own_slapd.binds(ALICE_DN) == before  # no password was sent


async def test_start_tls_against_the_ldaps_port_fails_closed(
    slapd: Slapd, backend: Factory
) -> None:
    ldap = backend(
        url=f"ldap://localhost:{slapd.tls_port}", start_tls=True, ca_file=str(slapd.ca_file),
        **SEARCH, timeout=2,
    )  # fmt: skip
    with pytest.raises(BackendUnavailable):
        await ldap.authenticate("alice", PASSWORDS["alice"])


# -- availability --------------------------------------------------------------------------------


async def test_server_stopped_mid_run_then_restarted(own_slapd: Slapd, backend: Factory) -> None:
    ldap = backend(url=own_slapd.url, **SEARCH, **MEMBER_OF, timeout=2, cache_ttl=0)
    assert await ldap.authenticate("alice", PASSWORDS["alice"]) == ok("pusher", "developers")
    own_slapd.stop()
    for user, password in (("alice", PASSWORDS["alice"]), ("bob", "wrong"), ("nobody", "x")):
        started = time.monotonic()
        with pytest.raises(BackendUnavailable):
            await ldap.authenticate(user, password)
        assert time.monotonic() - started < ldap.settings.budget
    own_slapd.start()
    # The pooled connections died with the old slapd: the first check reconnects by itself.
    assert await ldap.authenticate("alice", PASSWORDS["alice"]) == ok("pusher", "developers")
    assert await ldap.authenticate("bob", "wrong") == WRONG
    assert await ldap.authenticate("nobody", "x") == UNKNOWN


async def test_a_hung_server_times_out_without_blocking_the_loop(
    own_slapd: Slapd, backend: Factory
) -> None:
    ldap = backend(url=own_slapd.url, **SEARCH, timeout=1, cache_ttl=0)
    assert await ldap.authenticate("alice", PASSWORDS["alice"]) == ok()
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.05)
            ticks += 1

    own_slapd.pause()  # accepts TCP connections, never answers
    task = asyncio.create_task(ticker())
    try:
        # A hung server is an answer (BackendUnavailable), not a hang: wait_for would raise
        # TimeoutError instead if the backend's own bound did not work.
        with pytest.raises(BackendUnavailable):
            await asyncio.wait_for(
                ldap.authenticate("alice", PASSWORDS["alice"]), ldap.settings.budget + 10
            )
    finally:
        task.cancel()
        own_slapd.resume()
    assert ticks > 5  # the event loop kept running meanwhile
    await asyncio.sleep(ldap.settings.timeout + 0.5)  # let the stuck thread give up
    assert await ldap.authenticate("alice", PASSWORDS["alice"]) == ok()


async def test_plain_ldap_by_a_loopback_name_goes_to_loopback_addresses_only(
    slapd: Slapd, backend: Factory
) -> None:
    """Plain ldap:// needs no allow_insecure for `localhost`: every address it resolves to is
    checked to be loopback before a password is sent (here all are: the login works)."""
    auth = backend(url=f"ldap://localhost:{slapd.port}", **SEARCH, **MEMBER_OF)
    assert await auth.authenticate("alice", PASSWORDS["alice"]) == ok("developers", "pusher")


async def test_failover_to_the_next_url(slapd: Slapd, backend: Factory) -> None:
    dead = f"ldap://127.0.0.1:{free_port()}"
    ldap = backend(url=[dead, slapd.url], **SEARCH)
    assert await ldap.authenticate("alice", PASSWORDS["alice"]) == ok()
    nothing = backend(url=[dead, f"ldap://127.0.0.1:{free_port()}"], **SEARCH)
    with pytest.raises(BackendUnavailable, match="no LDAP server answered"):
        await nothing.authenticate("alice", PASSWORDS["alice"])


async def test_misconfiguration_is_unavailable_not_unknown(slapd: Slapd, backend: Factory) -> None:
    # A service account that cannot bind, or a search base that does not exist, must not turn
    # every LDAP user into "no such user here" (a silent fall-through to the next backend).
    bad_service = backend(url=slapd.url, user_base=PEOPLE, bind_dn=SERVICE_DN,
                          bind_password="wrong")  # fmt: skip
    with pytest.raises(BackendUnavailable, match="service account"):
        await bad_service.authenticate("alice", PASSWORDS["alice"])
    bad_base = backend(url=slapd.url, **SERVICE, user_base="ou=nobody,dc=example,dc=org")
    with pytest.raises(BackendUnavailable, match="user search"):
        await bad_base.authenticate("alice", PASSWORDS["alice"])


async def test_closed_backend_is_unavailable(slapd: Slapd, backend: Factory) -> None:
    ldap = backend(url=slapd.url, **SEARCH, cache_ttl=0)
    assert await ldap.authenticate("alice", PASSWORDS["alice"]) == ok()
    ldap.close()
    with pytest.raises(BackendUnavailable):
        await ldap.authenticate("alice", PASSWORDS["alice"])


# -- cache and concurrency -----------------------------------------------------------------------


async def test_cache_answers_repeats_but_never_a_different_password(
    own_slapd: Slapd, backend: Factory
) -> None:
    ldap = backend(url=own_slapd.url, **SEARCH, **MEMBER_OF, cache_ttl=60)
    assert await ldap.authenticate("alice", PASSWORDS["alice"]) == ok("pusher", "developers")
    assert await ldap.authenticate("alice", PASSWORDS["alice"]) == ok("pusher", "developers")
    assert own_slapd.binds(ALICE_DN) == 1
    assert await ldap.authenticate("alice", "wrong") == WRONG  # asked the server
    assert own_slapd.binds(ALICE_DN) == 2
    assert await ldap.authenticate("alice", PASSWORDS["alice"]) == ok("pusher", "developers")
    assert own_slapd.binds(ALICE_DN) == 2  # the wrong password did not evict the good one

    own_slapd.stop()
    assert await ldap.authenticate("alice", PASSWORDS["alice"]) == ok("pusher", "developers")
    with pytest.raises(BackendUnavailable):  # not WRONG_PASSWORD from the cache
        await ldap.authenticate("alice", "wrong")
    with pytest.raises(BackendUnavailable):  # only successes are remembered
        await ldap.authenticate("bob", "wrong")


async def test_cache_expires(own_slapd: Slapd, backend: Factory) -> None:
    now = [0.0]
    ldap = backend(url=own_slapd.url, **SEARCH, cache_ttl=0.5, clock=lambda: now[0])
    assert await ldap.authenticate("alice", PASSWORDS["alice"]) == ok()
    now[0] += 0.4
    assert await ldap.authenticate("alice", PASSWORDS["alice"]) == ok()
    assert own_slapd.binds(ALICE_DN) == 1
    now[0] += 0.2  # past cache_ttl since the first check
    assert await ldap.authenticate("alice", PASSWORDS["alice"]) == ok()
    assert own_slapd.binds(ALICE_DN) == 2
    off = backend(url=own_slapd.url, **SEARCH, cache_ttl=0)
    for _ in range(3):
        assert await off.authenticate("alice", PASSWORDS["alice"]) == ok()
    assert own_slapd.binds(ALICE_DN) == 5


async def test_concurrent_identical_logins_share_one_bind(
    own_slapd: Slapd, backend: Factory
) -> None:
    ldap = backend(url=own_slapd.url, **SEARCH, **MEMBER_OF)
    results = await asyncio.gather(
        *(ldap.authenticate("alice", PASSWORDS["alice"]) for _ in range(20))
    )
    assert results == [ok("pusher", "developers")] * 20
    assert own_slapd.binds(ALICE_DN) == 1


async def test_concurrent_logins_of_different_users(own_slapd: Slapd, backend: Factory) -> None:
    ldap = backend(url=own_slapd.url, **SEARCH, **MEMBER_OF, pool_size=2, cache_ttl=0)
    expected = {
        ("alice", PASSWORDS["alice"]): ok("pusher", "developers"),
        ("bob", PASSWORDS["bob"]): ok("developers", "release team"),
        ("carol", PASSWORDS["carol"]): ok(),
        ("alice", "wrong"): WRONG,
        ("mallory", "x"): UNKNOWN,
    }
    attempts = list(expected) * 6
    results = await asyncio.gather(*(ldap.authenticate(u, p) for u, p in attempts))
    assert results == [expected[a] for a in attempts]
    # Two workers, each with at most a search and a bind connection (service bound once).
    assert own_slapd.binds(SERVICE_DN) <= 2
