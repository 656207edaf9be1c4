"""Errors a user can fix (bad paths, corrupt files, wrong options).

Command lines turn them into a one-line message and exit code 2, the service into a 4xx;
anything else is a bug and keeps its traceback.
"""


class InputError(ValueError):
    """Bad input from the user: a missing or corrupt file, an unknown option value."""
