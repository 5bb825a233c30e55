"""The one root of the errors this project raises on purpose, with what each entry point does with
them.

Every error class (``leaf_common``'s, the job's ``LeafTrainError``, the server's ``ServeError``)
derives from :class:`LeafError` and says, as class attributes, how it ends a process and how it
answers a request: the job's ``cli.main`` exits with ``exit_code``, the server's REST and gRPC
handlers answer with ``http_status``. Neither needs a table of classes.

Some errors also keep a builtin base (``ValueError``, ``RuntimeError``) that callers catch them by.
"""

from __future__ import annotations

EXIT_FAILURE = 1  # anything unexpected: the Job retries it up to backoffLimit
# bad option or environment: retrying cannot help (the chart's podFailurePolicy fails the Job)
EXIT_CONFIG = 2


class LeafError(Exception):
    """Base class: ``exit_code`` for a command line, ``http_status`` for a server answering a
    request."""

    exit_code = EXIT_FAILURE
    http_status = 500
