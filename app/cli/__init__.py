"""The command-line face: subcommands over the engine, human output or JSON lines."""

from __future__ import annotations

import sys
import traceback
from collections.abc import Sequence

from app.core.errors import Cancelled, ExitCode, WizardError
from app.core.events import LogEvent
from app.core.run import internal_error
from app.ui.launch import display_problem

from .commands import COMMANDS
from .context import Context
from .parser import build_parser

__all__ = ["build_parser", "main"]


def _gui(home: str | None, smoke_test: bool) -> int:
    problem = display_problem()
    if problem is not None:
        sys.stderr.write(
            f"The wizard window cannot open: {problem}.\n"
            "Start it from a desktop session (or with ssh -X), or use the command line, which "
            "does everything the wizard does, for example:\n"
            "  nixos-kexec-wizard probe root@SERVER\n"
            "  nixos-kexec-wizard install root@SERVER\n"
            "See `nixos-kexec-wizard --help`.\n"
        )
        return int(ExitCode.USAGE)
    try:
        from app.ui.main import run_gui
    except ImportError as exc:
        sys.stderr.write(
            f"The wizard window cannot start: {exc}.\n"
            "Qt needs a few system libraries (on Debian/Ubuntu: libegl1 libxkbcommon-x11-0 "
            "libxcb-cursor0 libfontconfig1). Every feature is also available from the command "
            "line: see `nixos-kexec-wizard --help`.\n"
        )
        return int(ExitCode.CONFIG)
    return run_gui(home, smoke_test)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``nixos-kexec-wizard``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        return _gui(args.gui_home, args.smoke_test)
    if getattr(args, "home", None) is None and args.gui_home:
        args.home = args.gui_home  # `--home DIR` before the subcommand counts too
    ctx: Context | None = None
    try:
        ctx = Context(args)
        return int(COMMANDS[args.command](ctx))
    except WizardError as exc:
        if ctx is not None:
            ctx.report.error(exc)
        else:
            sys.stderr.write(exc.explain() + "\n")
        return int(exc.exit_code)
    except Exception as exc:  # a bug: say so plainly, keep the details in the log
        err = internal_error(exc)
        if ctx is not None and ctx.report.log is not None:
            ctx.report.log.write(LogEvent("internal", ctx.report.redact(traceback.format_exc())))
            err.why += f" Details are in {ctx.report.log.path}."
        if ctx is not None:
            ctx.report.error(err)
        else:
            sys.stderr.write(err.explain() + "\n")
        return int(ExitCode.INTERNAL)
    except KeyboardInterrupt:
        if ctx is not None:
            ctx.cancel.cancel()
            ctx.report.error(Cancelled("Interrupted."))
        return int(ExitCode.CANCELLED)
