class UserError(Exception):
    """A mistake the user can fix: printed as one line, exit code 2, no traceback."""
