"""The one exception type that means "the user asked for something we cannot do".

The CLI turns a `GankitError` into a single line on stderr and exit code 2. Any
other exception (a bug, or bad input no check foresaw) also ends as one line and
exit code 2, saying its type; GANKIT_DEBUG=1 lets it raise with its traceback.
"""


class GankitError(Exception):
    """Bad input: a config value, a path, a dataset or a checkpoint we refuse."""


def first_line(e: BaseException) -> str:
    """An exception's first non-blank line, for a one-line message; its type when it says nothing."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return lines[0] if lines else type(e).__name__


def require(module: str, extra: str, purpose: str):
    """Import an optional dependency, or refuse in one line naming the extra to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise GankitError(
            f"{purpose} needs {module}, from gankit's {extra} extra: pip install 'gankit[{extra}]'"
        ) from None
