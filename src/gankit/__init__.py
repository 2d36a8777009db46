"""gankit: build, train, watch, evaluate and sample Generative Adversarial Networks."""

from importlib import metadata

try:  # one source of truth: the version in pyproject.toml, as installed
    __version__ = metadata.version("gankit")
except metadata.PackageNotFoundError:  # a source tree on sys.path, never installed
    __version__ = "0+unknown"


def versions() -> dict[str, str]:
    """What wrote a file: recorded in each run's config.yaml and checkpoint header."""
    import torch

    return {"gankit": __version__, "torch": str(torch.__version__)}
