"""Password hashing through passlib (the maintained libpass fork) with argon2."""

from passlib.context import CryptContext

MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 1024

# argon2's parameters are the library's current defaults; hashes made with older
# parameters are upgraded on the next successful login.
_context = CryptContext(schemes=["argon2"], deprecated="auto")

# Verified against when the email is unknown, so both failures take the same time.
_DUMMY_HASH = _context.hash("not-a-real-password")


def hash_password(password: str) -> str:
    return _context.hash(password)


def verify_password(password: str, password_hash: str | None) -> tuple[bool, str | None]:
    """(matches, new hash or None); with no hash, spend the same time and fail."""
    if password_hash is None:
        _context.verify(password, _DUMMY_HASH)
        return False, None
    return _context.verify_and_update(password, password_hash)
