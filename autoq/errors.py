"""Errors a user can fix. The CLI prints them as one line and exits with code 2."""

from __future__ import annotations


class AutoqError(Exception):
    """Base of every error caused by the user's input (files, config, options)."""


class ConfigError(AutoqError):
    """autoq.yaml is invalid: names the file and the key."""


class DataError(AutoqError):
    """Images or annotations are missing or unreadable."""


class ModelError(AutoqError):
    """The ONNX model is missing, corrupt or cannot be handled."""


class SearchError(AutoqError):
    """The study cannot run or continue (storage, budget, unknown trial)."""


class ExportError(AutoqError):
    """A trial's configuration cannot be written in the requested format."""


class ToolchainError(AutoqError):
    """A vendor toolchain (run in its own environment) failed on a trial's bundle."""


class AutoqWarning(UserWarning):
    """Something the user should know that does not stop the run (e.g. skipped undecodable images);
    the CLI prints it as one ``autoq: warning:`` line."""
