"""Business rules as plain functions: they change the session, the caller commits."""


class RuleError(Exception):
    """A business rule refused the request; ``code`` is the HTTP status that fits."""

    def __init__(self, code: int, message: str, field: str | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field
