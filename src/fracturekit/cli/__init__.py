"""Command line: ``fracturekit <command> ...``.

Each subcommand lives in its own module of this package as a row of ``COMMANDS``: the module
defines ``register(parser)`` (adds its arguments) and ``run(args) -> int`` (calls one library
function and returns the exit code). ``main(argv)`` is callable from tests.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from fracturekit import __version__
from fracturekit._alloc import keep_freed_memory

# name -> (module, one-line help). Order is the order shown by --help.
COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("synth", "generate a synthetic crack data set with exact masks and widths"),
    "inspect": ("inspect", "summarise a data set: counts, sizes, unreadable files, duplicates"),
    "train": ("train", "train a classifier and write a self-describing checkpoint"),
    "evaluate": ("evaluate", "measure a checkpoint on labelled data (metrics.json, plots, report)"),
    "explain": ("explain", "class-activation heat maps showing where the fracture is"),
    "width": ("width", "crack length and width profiles from masks or images"),
    "predict": ("predict", "classify images, folders or a CSV manifest in batches"),
    "scan": ("scan", "scan a large image tile by tile into a crack-probability map"),
    "export": ("export", "export a checkpoint to ONNX with a parity check"),
    "serve": ("serve", "REST API and web page (FastAPI under uvicorn)"),
    "demo": ("demo", "the whole pipeline offline on generated data"),
}


class CLIError(Exception):
    """A user-facing error: printed as ``fracturekit: error: <message>``, exit code 2."""


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole command line; with ``only`` (a command's name) just that command's module is
    imported and its arguments added, the others stay names with their one-line help, so a
    command starts without loading what the others need."""
    parser = argparse.ArgumentParser(
        prog="fracturekit",
        description="Find fractures and cracks in images: bone X-rays, concrete, pavement, "
        "masonry, rock and borehole images.",
    )
    parser.add_argument("--version", action="version", version=f"fracturekit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        if only is not None and name != only:
            sub.add_parser(name, help=help_text)
            continue
        module = importlib.import_module(f"fracturekit.cli.{module_name}")
        cmd = sub.add_parser(
            name,
            help=help_text,
            description=(module.__doc__ or help_text).strip(),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.register(cmd)
        # A command module may opt out of the allocator tuning (KEEP_FREED_MEMORY = False).
        cmd.set_defaults(_run=module.run, _keep_freed=getattr(module, "KEEP_FREED_MEMORY", True))
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default: ``sys.argv[1:]``), run the command, return its exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv[0] if argv and argv[0] in COMMANDS else None)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if args._keep_freed:  # a process-wide allocator setting: the command line's, not the library's
        keep_freed_memory()
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("fracturekit: interrupted", file=sys.stderr)
        return 130
    except (CLIError, ValueError, FileNotFoundError, FileExistsError, NotADirectoryError) as exc:
        # Library errors carry user-facing messages that name the file and the problem.
        print(f"fracturekit {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except (NotImplementedError, RecursionError):
        raise  # programming errors keep their traceback
    except (RuntimeError, OSError) as exc:
        # The system or a library refused (disk full, no permission, out of memory): one line.
        print(f"fracturekit {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 1


def _one_line(exc: BaseException) -> str:
    """``exc`` as one line: ``<file>: <reason>`` for system errors, newlines folded."""
    if isinstance(exc, OSError) and exc.strerror and exc.filename is not None:
        text = f"{exc.filename}: {exc.strerror}"
        if exc.filename2 is not None:
            text += f" (-> {exc.filename2})"
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(text.split())
