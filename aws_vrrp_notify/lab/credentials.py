"""Instance-profile credentials as the EC2 metadata service hands them out.

An instance with an instance profile gets temporary credentials of its role at
``meta-data/iam/security-credentials/<role>``: an ``ASIA...`` access key, a secret, a
session token and an ``Expiration``.  EC2 makes new credentials available before the
old ones expire; :class:`InstanceProfile` does the same: the credentials it serves
are replaced once less than ``overlap`` seconds (a quarter of their lifetime, at most
5 minutes) remain, so that what it serves is never about to expire.

The default lifetime here is one hour (EC2's are several hours).  Lifetimes of 15 minutes
or less make botocore treat fresh credentials as due for refresh (its advisory window
is 15 minutes) and even extend their expiry on its own, so only a test that wants that
should ask for them.
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import secrets
import string
import threading
import time
from dataclasses import dataclass
from typing import Optional

DEFAULT_ROLE = "vrrp-failover"
DEFAULT_TTL = 3600.0
MAX_OVERLAP = 300.0
_KEY_ALPHABET = string.ascii_uppercase + string.digits


def _iso(epoch: float) -> str:
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class RoleCredentials:
    access_key_id: str
    secret_access_key: str
    token: str
    expiration: float      # epoch seconds
    last_updated: float    # epoch seconds

    def document(self) -> str:
        """The JSON of ``meta-data/iam/security-credentials/<role>``."""
        return json.dumps({
            "Code": "Success",
            "LastUpdated": _iso(self.last_updated),
            "Type": "AWS-HMAC",
            "AccessKeyId": self.access_key_id,
            "SecretAccessKey": self.secret_access_key,
            "Token": self.token,
            "Expiration": _iso(self.expiration),
        }, indent=2)


def new_credentials(ttl: float, now: Optional[float] = None) -> RoleCredentials:
    now = time.time() if now is None else now
    return RoleCredentials(
        access_key_id="ASIA" + "".join(secrets.choice(_KEY_ALPHABET) for _ in range(16)),
        secret_access_key=base64.b64encode(os.urandom(30)).decode(),
        token="IQoJb3JpZ2luX2Vj" + base64.b64encode(os.urandom(600)).decode(),
        expiration=now + ttl,
        last_updated=now,
    )


class InstanceProfile:
    """The role credentials of one instance, rotated before they expire."""

    def __init__(self, account_id: str, role: str = DEFAULT_ROLE, ttl: float = DEFAULT_TTL):
        self.account_id = account_id
        self.role = role
        self.default_ttl = ttl
        self.ttl = ttl
        self.issued: list[RoleCredentials] = []
        self.profile_id = "AIPA" + "".join(secrets.choice(_KEY_ALPHABET) for _ in range(17))
        self._lock = threading.Lock()

    def current(self) -> RoleCredentials:
        """The credentials served now (new ones once the current are close to expiry)."""
        with self._lock:
            now = time.time()
            if not self.issued or now >= self.issued[-1].expiration - self._overlap():
                self.issued.append(new_credentials(self.ttl, now))
            return self.issued[-1]

    def _overlap(self) -> float:
        return min(MAX_OVERLAP, self.ttl / 4)

    def rotate(self) -> RoleCredentials:
        """Issue new credentials now (as EC2 does on its own schedule)."""
        with self._lock:
            self.issued.append(new_credentials(self.ttl))
            return self.issued[-1]

    def issued_key(self, access_key_id: Optional[str]) -> Optional[RoleCredentials]:
        """The credentials with this access key, if this profile issued them."""
        with self._lock:
            return next((c for c in self.issued if c.access_key_id == access_key_id), None)

    def reset(self) -> None:
        """Back to the default lifetime (the credentials issued so far stay valid)."""
        with self._lock:
            self.ttl = self.default_ttl

    def info(self) -> str:
        """The JSON of ``meta-data/iam/info``."""
        last = self.issued[-1].last_updated if self.issued else time.time()
        return json.dumps({
            "Code": "Success",
            "LastUpdated": _iso(last),
            "InstanceProfileArn": f"arn:aws:iam::{self.account_id}:instance-profile/{self.role}",
            "InstanceProfileId": self.profile_id,
        }, indent=2)

    def tree(self) -> dict:
        """The ``meta-data/iam`` node."""
        creds = self.current()
        return {"info": self.info(), "security-credentials": {self.role: creds.document()}}
