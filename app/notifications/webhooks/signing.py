"""Signing secrets: made, sealed for the database, and used to sign (Standard Webhooks).

A secret is ``whsec_`` + base64 of 32 random bytes, shown once to the admin who made it.
The database keeps it sealed with AES-256-GCM under a key derived (HKDF-SHA256) from
SECRET_KEY: someone who reads the database (a dump, a replica, a backup) cannot sign
webhooks with what they read. Changing SECRET_KEY makes the stored secrets unreadable:
deliveries then fail with an error that says so until ``rotate-secret`` gives a new one.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from flask import current_app

PREFIX = "whsec_"
# The specification asks for 24 to 64 random bytes.
SECRET_BYTES = 32
SEALED = "v1."
NONCE_BYTES = 12


class SecretUnreadable(Exception):
    """A stored secret cannot be unsealed (SECRET_KEY changed since it was made)."""


def new_secret() -> str:
    return PREFIX + base64.b64encode(os.urandom(SECRET_BYTES)).decode()


@functools.lru_cache(maxsize=4)
def _key(secret_key: str) -> AESGCM:
    derived = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=b"marketplace webhook secrets"
    ).derive(secret_key.encode())
    return AESGCM(derived)


def _cipher() -> AESGCM:
    return _key(current_app.config["SECRET_KEY"])


def seal(secret: str) -> str:
    """The secret as the database keeps it."""
    nonce = os.urandom(NONCE_BYTES)
    sealed = _cipher().encrypt(nonce, secret.encode(), None)
    return SEALED + base64.b64encode(nonce + sealed).decode()


def unseal(stored: str) -> str:
    raw = base64.b64decode(stored.removeprefix(SEALED))
    try:
        return _cipher().decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], None).decode()
    except InvalidTag as exc:
        raise SecretUnreadable(
            "the signing secret cannot be read (SECRET_KEY changed?): rotate the secret"
        ) from exc


def signature(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    """``v1,`` + base64 of HMAC-SHA256 over ``{id}.{timestamp}.{body}``, keyed with the
    base64-decoded part of the secret after ``whsec_``."""
    key = base64.b64decode(secret.removeprefix(PREFIX))
    content = f"{webhook_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, content, hashlib.sha256).digest()).decode()


def signatures(secrets: list[str], webhook_id: str, timestamp: int, body: bytes) -> str:
    """The webhook-signature header: one signature per secret, space-separated."""
    return " ".join(signature(secret, webhook_id, timestamp, body) for secret in secrets)
