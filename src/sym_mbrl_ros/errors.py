"""User-facing errors: one clear sentence, exit code 2 on the command line, never a traceback."""


class UserError(ValueError):
    """Something the user can fix (bad file, wrong shape, unknown name); the message says how."""
