"""`regproxy passwd --redis URL USER` / `--store`: users of the `redis` auth backend, written as
any tool may write them (`proxy.state.redis_layout`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import cast

import redis
import redis.sentinel

from ..authn.credentials import hash_password, identify
from ..conf.config import load
from ..core.addresses import parse_upstream
from ..core.problems import ConfigError
from ..state.redis_layout import Keys, client_options, parse_redis_url, sentinel_options
from ..state.redis_store import redis_password, sentinel_password
from ..state.store import StateSettings

ReadPassword = Callable[[bool, bool], str | None]


def changes(
    new_hash: str | None, groups: str | None, upstream: str | None
) -> tuple[dict[str, str], list[str]]:
    """The fields to set and to delete for the options given ('' deletes a field). Pure;
    ValueError for a bad upstream or group name."""
    fields: dict[str, str] = {}
    gone: list[str] = []
    if new_hash is not None:
        fields["password"] = new_hash
    if groups is not None:
        names = groups.replace(",", " ").split()
        if any(":" in name for name in names):
            raise ValueError(f"group names may not contain ':', got {groups!r}")
        if names:
            fields["groups"] = " ".join(names)
        else:
            gone.append("groups")
    if upstream is not None:
        if upstream:
            fields["upstream"] = parse_upstream(upstream)
        else:
            gone.append("upstream")
    return fields, gone


def _settings(args: argparse.Namespace, config_path: Path | None) -> StateSettings | None:
    """From --redis, or the config's state: section (None when it is not Redis)."""
    if args.redis is not None:
        return StateSettings("redis", parse_redis_url(args.redis), args.key_prefix)
    settings = load(config_path).state
    return settings if settings.backend == "redis" else None


def redis_passwd(
    args: argparse.Namespace, config_path: Path | None, read_password: ReadPassword
) -> int:
    """Add, change, delete or verify one user in Redis; the exit status."""
    try:
        settings = _settings(args, config_path)
        password = redis_password(settings) if settings else None
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"--redis: {exc}", file=sys.stderr)
        return 2
    if settings is None:
        print(f"{config_path or 'the config'}: no state: {{backend: redis}}", file=sys.stderr)
        return 1
    user = args.names[0]
    try:
        client = redis_client(replace(settings, timeout=max(settings.timeout, 5.0)), password)
        with client:
            status = _apply(client, Keys(settings.key_prefix), user, args, read_password)
            if settings.sentinels and status == 0 and not (args.verify or _replicated(client)):
                print(
                    "warning: no replica confirmed the change within 2s: if the primary fails "
                    "before one has it, the change is lost",
                    file=sys.stderr,
                )
            return status
    except (redis.RedisError, ConfigError) as exc:
        print(f"Redis at {settings.where}: {exc}", file=sys.stderr)
        return 1


def redis_client(settings: StateSettings, password: str | None) -> redis.Redis:
    """A client of Redis: the URL's, or the primary the sentinels name."""
    options = client_options(settings, password, settings.timeout)
    if not settings.sentinels:
        assert settings.url is not None
        return redis.Redis.from_url(settings.url, **options)
    assert settings.service is not None
    sentinel_kwargs = sentinel_options(settings, sentinel_password(settings))
    sentinel = redis.sentinel.Sentinel(settings.sentinels, sentinel_kwargs=sentinel_kwargs)
    client: redis.Redis = sentinel.master_for(settings.service, **options)
    return client


def _replicated(client: redis.Redis) -> bool:
    """Whether a replica has what this client wrote (Sentinel: a failover keeps it)."""
    return int(client.wait(1, 2000)) > 0


def _apply(
    client: redis.Redis,
    keys: Keys,
    user: str,
    args: argparse.Namespace,
    read_password: ReadPassword,
) -> int:
    key = keys.user(user)
    if args.delete:
        with client.pipeline() as pipe:
            pipe.delete(key)
            pipe.incr(keys.users_version)
            deleted, _ = pipe.execute()
        if not deleted:
            print(f"user {user!r} not found in Redis", file=sys.stderr)
            return 1
        print(f"deleted user {user}")
        return 0
    entered = read_password(args.stdin, not args.verify)
    if entered is None:
        return 1
    if args.verify:
        stored = identify(cast(bytes, client.hget(key, "password") or b"").decode())
        ok = stored is not None and stored.verify(entered.encode())
        print("password correct" if ok else "password verification failed")
        return 0 if ok else 3
    try:
        fields, gone = changes(hash_password(entered, args.cost), args.groups, args.upstream)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    with client.pipeline() as pipe:
        pipe.exists(key)
        pipe.hset(key, mapping=fields)  # type: ignore[arg-type]
        if gone:
            pipe.hdel(key, *gone)
        pipe.incr(keys.users_version)
        existed = pipe.execute()[0]
    print(f"{'updated' if existed else 'added'} user {user} in Redis")
    return 0
