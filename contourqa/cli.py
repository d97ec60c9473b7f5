"""The `contourqa` command: one parser composed of each part's commands (the engine's in qa_models,
training's in training, the node's in daemon), so no part imports another only to reach its commands.

Command modules import their libraries inside the command that needs them, which keeps `--help` and
`status` fast. Errors a user can cause end as one line on stderr and exit status 2; no traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from contourqa import __version__
from contourqa.daemon.cli_node import add_node_commands
from contourqa.qa_models.cli_assess import add_assess_commands
from contourqa.qa_models.errors import ContourQAError
from contourqa.training.cli_training import add_training_commands

EXIT_OK, EXIT_INPUT_ERROR, EXIT_INTERRUPTED = 0, 2, 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="contourqa", description="Quality checks of automatically generated contours.")
    parser.add_argument("--version", action="version", version=f"contourqa {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress and library warnings")
    commands = parser.add_subparsers(dest="command", required=True)
    add_assess_commands(commands)
    add_training_commands(commands)
    add_node_commands(commands)
    demo = commands.add_parser("demo", help="send a phantom study through a node over DICOM and print the SR's "
                                            "verdicts (exit 0 only when a valid SR came back)")
    demo.add_argument("--node", help="a running node, AET@HOST:PORT (default: start one on a temporary home)")
    demo.add_argument("--listen", type=int, default=0,
                      help="port the SR is received on (with --node: the port of the node's destination)")
    demo.add_argument("--work", type=Path, help="keep the study, the node's home and the SR here")
    demo.add_argument("--timeout", type=float, default=300, help="seconds to wait for the SR (default 300)")
    demo.set_defaults(run=_run_demo)
    return parser


def _run_demo(args: argparse.Namespace) -> int:
    from contourqa.demo import run_demo  # pynetdicom and highdicom only when the demo runs
    return run_demo(args)


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    logging.captureWarnings(True)
    if not verbose:
        # highdicom and pydicom warn about inherited header quirks; they are not the user's problem here.
        logging.getLogger("py.warnings").setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _configure_logging(args.verbose)
    try:
        return args.run(args)
    except ContourQAError as error:
        print(f"contourqa: error: {error}", file=sys.stderr)
        return EXIT_INPUT_ERROR
    except OSError as error:  # unreadable input or unwritable output named on the command line
        print(f"contourqa: error: {error.filename or ''}: {error.strerror or error}", file=sys.stderr)
        return EXIT_INPUT_ERROR
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
