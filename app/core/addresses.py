"""Email addresses in one canonical form, so that two accounts never differ only by a
lookalike: fullwidth letters, another alphabet's letters, or an IP address for a domain.

- Unicode NFKC, then case folding (fullwidth ``ADMIN`` is ``admin``).
- The part before @ is ASCII (a dot-atom, no quoted strings): what SES and most mail
  systems accept, and no lookalike letters.
- The domain is a name, never an IP literal (``[127.0.0.1]``); each of its labels is
  written in one script (``example`` with a Cyrillic ``a`` is refused, and so is its
  IDNA form ``xn--exmple-4nf``: a label in that form is decoded first); it is stored as
  IDNA's ASCII form (UTS 46), so ``bücher.example`` and ``xn--bcher-kva.example`` are one.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata

import idna

from app.core.text import key

LOCAL_PART = re.compile(r"[a-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[a-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
# Scripts that are written together (Japanese, Korean): one script for this rule.
HAN_FAMILY = {"CJK", "HIRAGANA", "KATAKANA", "HANGUL"}


class BadEmail(ValueError):
    """The address cannot be an account's; the message says why."""


def _scripts(label: str) -> set[str]:
    scripts = set()
    for char in label:
        if unicodedata.category(char).startswith("L"):
            script = unicodedata.name(char, "UNKNOWN").split()[0]
            scripts.add("HAN" if script in HAN_FAMILY else script)
    return scripts


def _is_ip(domain: str) -> bool:
    try:
        ipaddress.ip_address(domain.strip("[]").removeprefix("ipv6:"))
    except ValueError:
        return domain.startswith("[")
    return True


def canonical_email(value: str) -> str:
    """The canonical form of an email address; BadEmail when it cannot be an account's."""
    text = unicodedata.normalize("NFKC", value.strip()).casefold()
    local, at, domain = text.rpartition("@")
    if not at or not local or not domain:
        raise BadEmail("Not a valid email address.")
    if not LOCAL_PART.fullmatch(local):
        raise BadEmail(
            "The part before @ may use only letters a-z, digits, dots and "
            "!#$%&'*+/=?^_`{|}~- (no accents or lookalike letters)."
        )
    if _is_ip(domain):
        raise BadEmail("The domain must be a name, not an IP address.")
    domain = domain.rstrip(".")
    try:
        # A label already in IDNA's ASCII form (xn--...) is checked as what it spells.
        labels = [idna.decode(label) if label.startswith("xn--") else label
                  for label in domain.split(".")]  # fmt: skip
    except (idna.IDNAError, UnicodeError) as exc:
        raise BadEmail("The domain is not a valid domain name.") from exc
    if any(len(_scripts(label)) > 1 for label in labels):
        raise BadEmail("The domain mixes alphabets (a lookalike of another address).")
    try:
        ascii_domain = idna.encode(domain, uts46=True).decode("ascii")
    except (idna.IDNAError, UnicodeError) as exc:
        raise BadEmail("The domain is not a valid domain name.") from exc
    if "." not in ascii_domain:
        raise BadEmail("The domain must be a full name, such as example.com.")
    return f"{local}@{ascii_domain}"


def lookup_email(value: str) -> str:
    """The form to look an account up by: canonical when it can be, else as sent,
    lowercased (no account has it: the login fails as any wrong email does)."""
    try:
        return canonical_email(value)
    except BadEmail:
        return key(value)
