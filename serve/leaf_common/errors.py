"""The one root of the errors raised on purpose, with what each entry point does with them.

Each class says how it ends a process (``exit_code``) and how it answers a request
(``http_status``).
Design: docs/development.md#errors-one-root-and-what-each-entry-point-does-with-it
"""

from __future__ import annotations

EXIT_FAILURE = 1  # anything unexpected: the Job retries it up to backoffLimit
# bad option or environment: retrying cannot help (the chart's podFailurePolicy fails the Job)
EXIT_CONFIG = 2


class LeafError(Exception):
    """Base class: ``exit_code`` for a command line, ``http_status`` for a server's answer."""

    exit_code = EXIT_FAILURE
    http_status = 500
