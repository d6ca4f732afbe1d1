"""Errors the runtime reports to its user.

Every error a user can cause (a bad model file, a spec that disagrees with
the model, a malformed log, an unknown backend) is an :class:`EdgeInferError`.
The command-line tools print its message as one line and exit non-zero, so the
message must say what is wrong *and* how to fix it. Anything else escaping is
a bug in edge-infer.
"""


class EdgeInferError(Exception):
    """Base class: a problem with the user's input, reported as one line."""

    exit_code = 2


class ModelError(EdgeInferError):
    """The model file is missing, truncated, not TFLite, or fails its hash."""


class SpecError(EdgeInferError):
    """The model spec is malformed or disagrees with the model."""


class LogError(EdgeInferError):
    """A recorded log cannot be read (wrong columns, unparseable rows)."""


class BackendError(EdgeInferError):
    """No usable TFLite interpreter, or an unknown one was asked for."""


class SourceError(EdgeInferError):
    """A live source (serial port, link) cannot be opened or used."""


class ConfigError(EdgeInferError):
    """The service configuration is invalid."""


class TrustError(EdgeInferError):
    """A model bundle is unsigned, badly signed, signed by a key not trusted, or older than one accepted."""
