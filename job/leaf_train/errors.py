"""Errors of the training job and the exit codes they map to.

The Job fails loudly once: stages raise these specific errors, ``cli.main`` logs a
one-line reason and exits with the error's ``exit_code`` (every error derives from
:class:`leaf_common.errors.LeafError`). The chart's ``podFailurePolicy`` keys on these
codes: configuration and data errors fail the Job at once (retrying cannot help), a
preempted run that saved its checkpoint is retried without counting against ``backoffLimit``.
"""

from __future__ import annotations

# Re-exported: the job's stages raise ConfigError from here; the chart keys on the exit codes.
from leaf_common.config import ConfigError as ConfigError
from leaf_common.errors import EXIT_CONFIG as EXIT_CONFIG
from leaf_common.errors import EXIT_FAILURE as EXIT_FAILURE
from leaf_common.errors import LeafError

EXIT_OK = 0
EXIT_DATA = 3  # unusable dataset (too few classes/images): FailJob
EXIT_PREEMPTED = 75  # SIGTERM, checkpoint saved (EX_TEMPFAIL): Ignore, retry resumes


class LeafTrainError(LeafError, RuntimeError):
    """Base class of the job's own errors; ``exit_code`` is what the process exits with."""


class DataError(LeafTrainError):
    exit_code = EXIT_DATA


class ExportError(LeafTrainError):
    """Conversion failed or the ONNX model disagrees with Keras."""


class PublishError(LeafTrainError):
    """The model could not be written to the registry."""


class Preempted(LeafTrainError):
    """SIGTERM arrived; a checkpoint was saved and the run can resume."""

    exit_code = EXIT_PREEMPTED


class ModelRegistryError(LeafTrainError):
    """A registry operation was refused: unknown or incomplete version, lost compare-and-swap."""


class GateError(LeafTrainError):
    """The quality gate could not decide (bad inputs, or the champion could not be re-scored)."""
