"""Who may score, read and write whose preferences: API keys with scopes, user bindings, rates.

    python -m serve_app.auth new-key --scope feedback --users 'tenant_a_*'

A key is `prm_<id>_<secret>`: the id is public (it names the key in provenance and admin URLs),
the secret is 256 random bits. The keys file holds one JSON line per key with the SHA-256 of the
whole key, never the key. A plain hash, not scrypt or PBKDF2: slow hashes protect guessable
passwords, and no one guesses 256 random bits, while a slow hash would cost every request tens
of milliseconds. The digests are compared with `hmac.compare_digest` (constant time), and an
unknown id is compared against a dummy digest, so an answer's timing tells nothing of the secret.

Scopes: `score` (score, read users and prototypes), `feedback` (write a user's comparisons),
`admin` (all of those, plus listing and deleting a key's rows). A key bound to `users` (exact
ids or fnmatch patterns, `tenant_a_*`) may act only for matching users, reading and writing.

Rates are token buckets per key and per ingress replica: one of requests, and one of sampler
work (a score costs n + m samples, a batch the sum of its requests'), since one request at
n=32, m=32 is 64 times the work of one at n=1, m=0. Several replicas multiply a key's rate
by their number; a limit shared across replicas needs a shared store (future work).
"""

from __future__ import annotations

import argparse
import base64
import fnmatch
import hashlib
import hmac
import math
import os
import secrets
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, get_args

from fastapi import HTTPException
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_serializer

from serve_app.api import KEY_ID_PATTERN

if TYPE_CHECKING:
    from serve_app.config import AuthConfig

Scope = Literal["score", "feedback", "admin"]
PREFIX = "prm"
REALM = 'realm="personal-rm"'
_DUMMY_DIGEST = hashlib.sha256(b"no such key").hexdigest()


def digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


class KeyRecord(BaseModel):
    """One line of the keys file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=KEY_ID_PATTERN)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="Of the whole key, prefix too.")
    scopes: frozenset[Scope] = Field(min_length=1)
    users: tuple[str, ...] | None = Field(
        None, description="User ids or fnmatch patterns this key may act for; None: any user."
    )
    samples_per_s: float | None = Field(None, gt=0, description="None: the app's default.")
    requests_per_s: float | None = Field(None, gt=0, description="None: the app's default.")
    name: str = Field("", description="For people: whose key this is.")

    @field_serializer("scopes")
    def _sorted(self, scopes: frozenset[str]) -> list[str]:
        return sorted(scopes)

    def may_act_for(self, user_id: str) -> bool:
        # A user id's alphabet has none of fnmatch's `*?[]`, so an exact id matches only itself.
        return self.users is None or any(fnmatch.fnmatchcase(user_id, p) for p in self.users)

    def line(self) -> str:
        return self.model_dump_json(exclude_defaults=True)


def new_key(
    scopes: Iterable[Scope], users: Iterable[str] | None = None, **fields: object
) -> tuple[str, KeyRecord]:
    """A fresh key (to hand out once) and its record (to store)."""
    key_id = secrets.token_hex(6)
    key = f"{PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"
    record = KeyRecord(
        id=key_id,
        sha256=digest(key),
        scopes=frozenset(scopes),
        users=None if users is None else tuple(users),
        **fields,
    )
    return key, record


def parse_keys(text: str, source: str) -> dict[str, KeyRecord]:
    """Key lines (blank lines and `#` comments skipped) by id; a bad line names its number."""
    keys: dict[str, KeyRecord] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            record = KeyRecord.model_validate_json(line)
        except ValidationError as e:
            raise ValueError(f"{source}:{number}: not a key line: {e}") from None
        if record.id in keys:
            raise ValueError(f"{source}:{number}: key id {record.id} appears twice")
        keys[record.id] = record
    return keys


def load_keys(config: AuthConfig) -> dict[str, KeyRecord]:
    """The keys of the file and of the environment variable; a file without keys is refused,
    since whoever set it meant the server to be closed."""
    keys: dict[str, KeyRecord] = {}
    if config.keys_file is not None:
        keys = parse_keys(config.keys_file.read_text(), str(config.keys_file))
        if not keys:
            raise ValueError(f"{config.keys_file} holds no keys; unset auth.keys_file to run open")
    from_env = parse_keys(os.environ.get(config.keys_env, ""), f"${config.keys_env}")
    if twice := keys.keys() & from_env.keys():
        raise ValueError(f"key ids in both {config.keys_file} and ${config.keys_env}: {twice}")
    return keys | from_env


def presented_key(header: str | None) -> str:
    """The key of an `Authorization` header: `Bearer <key>`, or `Basic` with the key as the
    password (or as the user, for `curl -u KEY:`), which lets a browser open /docs. 401 else."""
    if not header:
        raise unauthorized("missing API key: send `Authorization: Bearer <key>`")
    scheme, _, value = header.strip().partition(" ")
    scheme, value = scheme.lower(), value.strip()
    if scheme == "basic":
        try:
            user, _, password = base64.b64decode(value, validate=True).decode().partition(":")
        except ValueError:  # not base64 (binascii.Error), non-ASCII text, not UTF-8 inside
            raise unauthorized("malformed Basic credentials") from None
        value = password or user
    elif scheme != "bearer":
        raise unauthorized("unsupported Authorization scheme: send `Bearer <key>`")
    if not value:
        raise unauthorized("empty credentials: send `Authorization: Bearer <key>`")
    return value


def unauthorized(reason: str) -> HTTPException:
    # Both challenges: API clients read Bearer, browsers prompt for Basic (and so open /docs).
    challenge = f"Bearer {REALM}, Basic {REALM}"
    return HTTPException(401, reason, headers={"WWW-Authenticate": challenge})


@dataclass
class TokenBucket:
    """`rate` tokens a second, at most `capacity` saved. A cost above the capacity is let
    through from a full bucket and leaves a debt, so a big batch is slowed down, never refused
    for good."""

    rate: float
    capacity: float
    tokens: float
    stamp: float

    @classmethod
    def full(cls, rate: float, burst_s: float, now: float) -> TokenBucket:
        return cls(rate, rate * burst_s, rate * burst_s, now)

    def wait(self, cost: float, now: float) -> float:
        """Seconds until `cost` may be charged (0: now)."""
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        return max(0.0, min(cost, self.capacity) - self.tokens) / self.rate


class Auth:
    """The ingress's gatekeeper. Its methods run on the replica's event loop, one at a time,
    so the buckets need no lock."""

    def __init__(self, keys: dict[str, KeyRecord], config: AuthConfig):
        self.keys, self.config = keys, config
        self.buckets: dict[str, tuple[TokenBucket, TokenBucket]] = {}

    @property
    def enabled(self) -> bool:
        return bool(self.keys)

    def authenticate(self, header: str | None) -> KeyRecord | None:
        """The caller's key (None: auth is off, everyone may do everything); 401 else. The
        answer never repeats what was sent."""
        if not self.enabled:
            return None
        key = presented_key(header)
        prefix, _, rest = key.partition("_")
        key_id, _, secret = rest.partition("_")
        record = self.keys.get(key_id) if prefix == PREFIX and secret else None
        expected = record.sha256 if record is not None else _DUMMY_DIGEST
        if not hmac.compare_digest(digest(key), expected) or record is None:
            raise unauthorized("invalid API key")
        return record

    def authorize(
        self,
        key: KeyRecord | None,
        scope: Scope | None = None,
        users: Iterable[str] = (),
        samples: int = 0,
    ) -> None:
        """403 for a scope or a user the key lacks, 429 (with Retry-After) over its rates.
        `scope=None`: any valid key (the docs). Admin endpoints need keys to exist at all."""
        if key is None:
            if scope == "admin":
                raise HTTPException(403, "admin endpoints need API keys; this server has none")
            return
        if scope is not None and scope not in key.scopes and "admin" not in key.scopes:
            raise HTTPException(
                403, f"key {key.id} lacks scope {scope!r} (has: {', '.join(sorted(key.scopes))})"
            )
        for user in users:
            if not key.may_act_for(user):
                raise HTTPException(403, f"key {key.id} may not act for user {user!r}")
        self.charge(key, samples)

    def charge(self, key: KeyRecord, samples: int, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if key.id not in self.buckets:
            burst = self.config.burst_s
            self.buckets[key.id] = (
                TokenBucket.full(key.requests_per_s or self.config.requests_per_s, burst, now),
                TokenBucket.full(key.samples_per_s or self.config.samples_per_s, burst, now),
            )
        requests, work = self.buckets[key.id]
        waits = {"requests": requests.wait(1, now), "samples": work.wait(samples, now)}
        if max(waits.values()) > 0:
            over = max(waits, key=waits.__getitem__)
            rate = requests.rate if over == "requests" else work.rate
            retry = max(1, math.ceil(waits[over]))
            raise HTTPException(
                429,
                f"key {key.id} is over its rate of {rate:g} {over}/s "
                f"(this request: 1 request, {samples} samples); retry in {retry} s",
                headers={"Retry-After": str(retry)},
            )
        requests.tokens -= 1
        work.tokens -= samples


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m serve_app.auth", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("new-key", help="Print a new key once, and its keys-file line.")
    make.add_argument("--scope", action="append", required=True, choices=get_args(Scope))
    make.add_argument(
        "--users",
        action="append",
        help="User ids or fnmatch patterns (repeat, or comma-separate); default: any user.",
    )
    make.add_argument("--samples-per-s", type=float, help="This key's rate of sampler work.")
    make.add_argument("--requests-per-s", type=float, help="This key's rate of requests.")
    make.add_argument("--name", default="", help="Whose key this is, for people.")
    args = parser.parse_args(argv)
    users = None
    if args.users:
        users = [u.strip() for arg in args.users for u in arg.split(",") if u.strip()]
    extra = {
        k: v
        for k, v in (
            ("samples_per_s", args.samples_per_s),
            ("requests_per_s", args.requests_per_s),
            ("name", args.name),
        )
        if v
    }
    key, record = new_key(args.scope, users, **extra)
    print("# The key, shown this once (it is stored nowhere); give it to its client:")
    print(key)
    print("# The line for the keys file (auth.keys_file or $PRM_API_KEYS); it holds the hash:")
    print(record.line())


if __name__ == "__main__":
    main(sys.argv[1:])
