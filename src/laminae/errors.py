"""Errors that mean "the user asked for something wrong", reported as one line, no traceback.

Every check that can fail because of a config value, an input file or the environment raises a
subclass of `LaminaeError` whose message names the offending key or file and what was expected:

    >>> raise ConfigError("qkv.n_permutations", "an integer >= 0", -5)
    Traceback (most recent call last):
    laminae.errors.ConfigError: config key 'qkv.n_permutations': expected an integer >= 0, got -5
"""

from __future__ import annotations

from typing import Any


class LaminaeError(Exception):
    """A user-facing error: its message is one self-explanatory line."""


class ConfigError(LaminaeError):
    """A config key has a value the pipeline cannot use."""

    def __init__(self, key: str, expected: str, got: Any = None, *, has_value: bool = True):
        self.key = key
        message = f"config key '{key}': expected {expected}"
        if has_value and got is not None:
            message += f", got {got!r}"
        super().__init__(message)


class InputFileError(LaminaeError):
    """An input file is missing, empty, truncated or does not match its config."""

    def __init__(self, path: Any, problem: str):
        self.path = str(path)
        super().__init__(f"file '{path}': {problem}")


class ExperimentError(LaminaeError):
    """An experiment breaks the plug-in contract: its declaration, or a hook that did not write
    what the declaration promises."""

    def __init__(self, name: str, where: str, problem: str):
        self.name = name
        super().__init__(f"experiment {name!r} ({where}): {problem}")


class ModelUnavailableError(LaminaeError):
    """Model weights cannot be reached (offline and not cached, or a missing directory)."""
