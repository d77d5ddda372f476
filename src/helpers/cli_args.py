"""Shared by the course's command lines (helpers.smoke, helpers.bench; notebook 03 and 04).

* :class:`OneLineParser`: argparse whose usage errors are one line on stderr and exit status 2.
* :func:`number`, :func:`one_of`, :func:`comma_list`: ``type=`` callables that check a value and
  say in one sentence what is wrong and what to use instead.
* :func:`sigterm_raises`: SIGTERM becomes a :class:`Terminated` exception, so ``finally`` and
  ``with`` blocks stop what the command started, exactly as for Ctrl+C.
* :data:`COURSE_PYTHON` and :func:`course_command`: how a learner runs a course command from a
  terminal (``.venv/bin/python -m helpers.smoke``), the one spelling every ``prog``, usage line
  and hint uses.

Exit codes shared by every command line: 0 success, 1 failure, 2 invalid input,
130 interrupted (Ctrl+C, :data:`EXIT_INTERRUPTED`), 143 terminated (SIGTERM, :data:`EXIT_TERMINATED`).
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
from typing import Callable, Iterator, NoReturn, TypeVar

T = TypeVar("T")
N = TypeVar("N", int, float)

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 128 + signal.SIGINT
EXIT_TERMINATED = 128 + signal.SIGTERM

# The course's interpreter as a learner types it, from the repository root. `bash course.sh`
# installs into .venv and never activates it (AutoDL's own `python` has no `helpers`, and the
# `vllm` console script is not on PATH), so every recipe names this interpreter explicitly.
COURSE_PYTHON = ".venv/bin/python"


def course_command(module: str) -> str:
    """``"helpers.smoke"`` -> ``".venv/bin/python -m helpers.smoke"``: a command as a learner
    types it in a terminal at the repository root (argparse ``prog``, usage lines, hints)."""
    return f"{COURSE_PYTHON} -m {module}"


class Terminated(SystemExit):
    """SIGTERM arrived (``kill PID``, a container stopping). A SystemExit with code 143: like
    Ctrl+C's KeyboardInterrupt, ``except Exception`` does not swallow it, asyncio lets it through,
    and uncaught it ends the program with exit code 143."""

    def __init__(self) -> None:
        super().__init__(EXIT_TERMINATED)


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` (main thread only)."""

    def raise_terminated(signum, frame):  # noqa: ARG001 - signal handler signature
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def exit_with(main: Callable[[], int], prog: str) -> NoReturn:
    """``sys.exit(main())``, where a Ctrl+C or SIGTERM that escapes ``main`` (a second one while
    it was stopping what it started) still ends with one line and exit code 130 or 143."""
    try:
        with sigterm_raises():
            code = main()
    except KeyboardInterrupt:
        sys.stderr.write(f"{prog}: interrupted (Ctrl+C)\n")
        code = EXIT_INTERRUPTED
    except Terminated:
        sys.stderr.write(f"{prog}: terminated (SIGTERM)\n")
        code = EXIT_TERMINATED
    sys.exit(code)


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line, ``PROG: error: MESSAGE (see --help)``, and exit 2.

    Sub-commands get the same behaviour: ``add_subparsers`` uses the parser's own class.
    """

    def error(self, message: str) -> NoReturn:
        text = " ".join(message.split())
        self.exit(2, f"{self.prog}: error: {text} (see --help)\n")


def number(kind: Callable[[str], N], *, minimum: float | None = None, maximum: float | None = None,
           exclusive_minimum: bool = False, what: str = "", note: str = "") -> Callable[[str], N]:
    """``type=`` for an ``int`` or ``float`` in a range (``maximum`` is inclusive).

    With ``what`` (a noun) errors read ``-1 is not a valid port: use an integer in [0, 65535]``;
    without, ``1.5 is outside (0, 1]`` or ``'x' is not a number``. ``note`` is appended as is.
    """
    noun = "an integer" if kind is int else "a number"
    if minimum is not None and maximum is not None:
        allowed = f"{'(' if exclusive_minimum else '['}{minimum}, {maximum}]"
    elif minimum is not None:
        allowed = f"{'>' if exclusive_minimum else '>='} {minimum}"
    else:
        allowed = f"<= {maximum}" if maximum is not None else ""
    bounded = minimum is not None and maximum is not None
    use = f"use {noun}" + (f" in {allowed}" if bounded else f" {allowed}" if allowed else "")

    def parse(text: str) -> N:
        try:
            value = kind(text)
        except ValueError:
            shown, parsed = repr(text), False
        else:
            shown, parsed = str(value), True
            # written so that NaN fails every bound
            low_ok = minimum is None or (value > minimum if exclusive_minimum else value >= minimum)
            if low_ok and (maximum is None or value <= maximum):
                return value
        if what:
            raise argparse.ArgumentTypeError(f"{shown} is not a valid {what}: {use}{note}")
        if not parsed:
            raise argparse.ArgumentTypeError(f"{shown} is not {noun}{note}")
        raise argparse.ArgumentTypeError(f"{shown} is {'outside' if bounded else 'not'} {allowed}{note}")

    return parse


def one_of(options: tuple[str, ...], *, what: str) -> Callable[[str], str]:
    """``type=`` for one of ``options`` (case-insensitive; returns the lower-case option)."""

    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in options:
            raise argparse.ArgumentTypeError(f"{text!r} is not a valid {what}: use one of {', '.join(options)}")
        return value

    return parse


def checked(check: Callable[[str], T]) -> Callable[[str], T]:
    """An argparse ``type=`` from a check that raises :class:`~helpers.errors.CourseError`:
    its message becomes the one-line usage error."""
    from .errors import CourseError

    def convert(text: str) -> T:
        try:
            return check(text)
        except CourseError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


def comma_list(item: Callable[[str], T], *, example: str) -> Callable[[str], list[T]]:
    """``type=`` for comma-separated values, each checked by ``item``; empty parts are skipped."""

    def parse(text: str) -> list[T]:
        parts = [part.strip() for part in text.split(",") if part.strip()]
        if not parts:
            raise argparse.ArgumentTypeError(f"{text!r}: give at least one value, e.g. {example}")
        try:
            return [item(part) for part in parts]
        except argparse.ArgumentTypeError as exc:
            raise argparse.ArgumentTypeError(f"{text!r}: {exc} (e.g. {example})") from None

    return parse
