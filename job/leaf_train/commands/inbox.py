"""``leaf-train inbox``: review captured photos from a terminal (list, accept, reject).

The same actions as leaf-serve's ``/review`` page, through the same code
(:class:`leaf_common.inbox.Inbox`): accepting copies the photo into ``<data>/<class>/<id>.<ext>``
with a conditional write and removes it from ``<output>/<model>/inbox/``; rejecting deletes it.
Options are the training job's (``--output``, ``--model-name``, ``--data`` and their
``LEAF_TRAIN_*`` variables), so the environment that trains can review.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
from dataclasses import dataclass

from leaf_common.config import add_arguments, option, option_error, resolve
from leaf_common.inbox import INBOX_DIR, CaptureRecord, Inbox, InboxError, InvalidName
from leaf_common.labels import readable_label
from leaf_common.shadow import note_review
from leaf_common.storage import open_store

from ..config import ENV_PREFIX, TrainConfig
from ..errors import ConfigError, LeafTrainError
from .models import ModelsConfig

log = logging.getLogger(__name__)

_TRAIN = {f.name: f for f in dataclasses.fields(TrainConfig)}


class ReviewError(LeafTrainError):
    """A review action was refused: no such capture, a changed photo, an unconfirmed new class."""


@dataclass
class InboxDataConfig:
    data: str = option(_TRAIN["data"].default, _TRAIN["data"].metadata["help"])

    def validate(self) -> None:
        if not self.data:
            expected = "the training data URI (s3://bucket/prefix or a folder) to accept into"
            raise option_error(ENV_PREFIX, "data", expected, "nothing")


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``inbox`` and its sub-commands to the ``leaf-train`` parser."""
    common = argparse.ArgumentParser(add_help=False)
    add_arguments(common.add_argument_group("registry"), ModelsConfig, ENV_PREFIX)
    p = sub.add_parser(
        "inbox", help="review photos the server captured: list, accept into the data, reject"
    )
    actions = p.add_subparsers(dest="inbox_command", required=True, metavar="ACTION")

    a = actions.add_parser("list", parents=[common], help="captured photos, newest first")
    a.add_argument("--limit", type=int, default=0, help="show at most this many (0 = all)")
    a.add_argument(
        "--format", choices=("text", "json"), default="text", help="text (for people) or json"
    )
    a.set_defaults(func=cmd_list)

    a = actions.add_parser(
        "accept",
        parents=[common],
        help="copy a photo into <data>/<class>/ (never overwriting), then remove it",
    )
    add_arguments(a.add_argument_group("data"), InboxDataConfig, ENV_PREFIX)
    a.add_argument("id", help="capture id (see `inbox list`)")
    a.add_argument(
        "label",
        help="the right class: a class folder name under --data, e.g. Tomato___Early_blight",
    )
    a.add_argument(
        "--new-class",
        action="store_true",
        help=(
            "allow a class with no photos yet (the next training needs --min-images-per-class "
            "of it)"
        ),
    )
    a.set_defaults(func=cmd_accept)

    a = actions.add_parser("reject", parents=[common], help="delete a photo that is not a leaf")
    a.add_argument("id", help="capture id")
    a.set_defaults(func=cmd_reject)


def _inbox(args: argparse.Namespace) -> Inbox:
    cfg = resolve(
        ModelsConfig, ENV_PREFIX, {k: getattr(args, k, None) for k in ("output", "model_name")}
    )
    model_store = open_store(cfg.output).child(cfg.model_name)
    inbox = Inbox(model_store.child(INBOX_DIR))
    # A shadow candidate's answer gets its label.
    inbox.on_accept = functools.partial(note_review, model_store)
    return inbox


def format_list(records: list[CaptureRecord]) -> str:
    """One line per capture: ID, CAPTURED, REASON, MODEL SAID (p), VERSION, what the person said."""
    rows = [("ID", "CAPTURED", "REASON", "MODEL SAID", "VERSION", "PERSON SAID")]
    for r in records:
        said = f"{readable_label(r.label)} ({r.probability:.0%})"
        rows.append((r.id, r.captured_at, r.reason, said, r.version, r.user_label or "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row[:-1], widths, strict=True)) + "  " + row[-1]
        for row in rows
    )


# Wraps a command: inbox errors become one line and an exit code.
def _run(action):  # noqa: ANN001, ANN202
    def wrapped(args: argparse.Namespace) -> int:
        try:
            return action(args)
        except InvalidName as e:
            raise ConfigError(str(e)) from e
        except InboxError as e:
            raise ReviewError(str(e)) from e

    return wrapped


@_run
def cmd_list(args: argparse.Namespace) -> int:
    if args.limit < 0:
        raise ConfigError(f"--limit: expected 0 (all) or a positive number, received {args.limit}")
    inbox = _inbox(args)
    records = inbox.list(args.limit or None)
    if args.format == "json":
        print(json.dumps([dataclasses.asdict(r) for r in records], indent=1))
    else:
        print(format_list(records) if records else f"the inbox is empty: {inbox.uri}")
    return 0


@_run
def cmd_accept(args: argparse.Namespace) -> int:
    data = resolve(InboxDataConfig, ENV_PREFIX, {"data": args.data}).data
    uri = _inbox(args).accept(args.id, args.label, open_store(data), new_class=args.new_class)
    print(f"accepted {args.id} as {args.label}: {uri}")
    return 0


@_run
def cmd_reject(args: argparse.Namespace) -> int:
    _inbox(args).reject(args.id)
    print(f"rejected {args.id}: deleted from the inbox")
    return 0
