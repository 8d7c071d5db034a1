"""The project's one exception for a problem with what the user asked for.

`UserError`: a setting, path or input the user gave that cannot be used; its message names it and
what was expected. The command line prints it as one `error:` line (exit 2) instead of a
traceback. Every other exception is a bug or a case nobody foresaw, and keeps its traceback, so
that a real bug is never dressed up as the user's mistake. `UserError` is a `ValueError`, so code
that catches `ValueError` keeps working.
"""


class UserError(ValueError):
  """A setting, path or input that cannot be used; the message says which and what was expected."""
