"""The one exception type that means "the user asked for something we cannot do".

The CLI turns a `GankitError` into a single line on stderr and exit code 2; any
other exception is a bug and keeps its traceback.
"""


class GankitError(Exception):
    """Bad input: a config value, a path, a dataset or a checkpoint we refuse."""
