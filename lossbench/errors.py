"""One exception type for user mistakes: the CLI prints it as a single line, never a traceback."""


class UserError(Exception):
    """A mistake the user can fix (unknown name, bad value, missing data)."""


def require(condition: bool, message: str) -> None:
    """Raise `UserError(message)` unless `condition` holds."""
    if not condition:
        raise UserError(message)
