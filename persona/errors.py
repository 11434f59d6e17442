"""One-line errors for mistakes in what the user gave a `persona` command (docs/ERRORS.md).

Every command runs through `run_user_command`: a user error (a missing, unreadable or corrupt
file, a bad setting) ends as one line on stderr, `persona <command>: <message>`, and exit status
1, without a traceback. `--debug` anywhere on the command line (removed before dispatch) or
`PERSONA_DEBUG=1` shows the full traceback instead. Anything else is treated as a bug: its
traceback is always shown (the exception propagates).

What counts as a user error (`user_message`):
- `UserError` (raised where the project knows the input is wrong), and the subject validator's
  `SubjectError` (its problems listed on the one line);
- FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError
  and PIL's "cannot identify image file";
- a ValueError raised by a `raise` statement of this project (persona/, data_prep/): our own
  validation. A ValueError raised inside a library (numpy, torch, ...) is a traceback;
- a failure inside torch's checkpoint reader (truncated or corrupt file).
"""

from __future__ import annotations

import difflib
import linecache
import os
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

DEBUG_FLAG = "--debug"
DEBUG_ENV = "PERSONA_DEBUG"
DEBUG_ENV_ON = ("1", "true", "yes", "on")  # values of PERSONA_DEBUG that turn debugging on
EXIT_USER_ERROR = 1
MAX_LISTED_PROBLEMS = 3  # subject problems spelled out on the one line; the rest are counted
MAX_SUGGESTIONS = 2  # nearest valid keys offered for a mistyped one
SUGGESTION_CUTOFF = 0.6  # difflib similarity below which a key is not offered
_REPO = Path(__file__).resolve().parent.parent
# folders whose own `raise ValueError(...)` statements are input validation
OWN_SOURCE_DIRS = (_REPO / "persona", _REPO / "data_prep")
# torch's checkpoint reader: the zip reader and both unpicklers
TORCH_CHECKPOINT_READERS = (os.path.join("torch", "serialization.py"),
                            os.path.join("torch", "_weights_only_unpickler.py"))
RERUN_HINT = "re-run `persona fit` or pick another checkpoint"


class UserError(ValueError):
    """A mistake in what the user gave (a file, a setting). The message is the one line shown:
    it names the file or setting, what is wrong and what to do. A ValueError, so that the
    tools' existing `except ValueError` handlers print it as their one line too."""


# ---------------------------------------------------------------------------- --debug
def debug_from_env(environ: dict[str, str] | None = None) -> bool:
    value = (os.environ if environ is None else environ).get(DEBUG_ENV, "")
    return value.strip().lower() in DEBUG_ENV_ON


def split_debug(argv: Sequence[str], environ: dict[str, str] | None = None
                ) -> tuple[list[str], bool]:
    """(argv without any `--debug`, whether to show tracebacks: the flag or PERSONA_DEBUG)."""
    rest = [arg for arg in argv if arg != DEBUG_FLAG]
    return rest, len(rest) != len(argv) or debug_from_env(environ)


# ---------------------------------------------------------------------------- classification
def _innermost_frame(error: BaseException) -> tuple[str, int] | None:
    """(file, line) where the exception was raised, or None without a traceback."""
    tb = error.__traceback__
    if tb is None:
        return None
    while tb.tb_next is not None:
        tb = tb.tb_next
    return tb.tb_frame.f_code.co_filename, tb.tb_lineno


def raised_by_own_code(error: BaseException) -> bool:
    """True when a `raise` statement in persona/ or data_prep/ raised `error` (validation), not
    a library call made from there."""
    where = _innermost_frame(error)
    if where is None:
        return False
    filename, line = where
    path = Path(filename).resolve()
    if not any(path.is_relative_to(folder) for folder in OWN_SOURCE_DIRS):
        return False
    return linecache.getline(filename, line).lstrip().startswith("raise")


def raised_by_checkpoint_reader(error: BaseException) -> bool:
    """True when torch's checkpoint reader (torch/serialization.py) raised `error`."""
    where = _innermost_frame(error)
    return where is not None and where[0].endswith(TORCH_CHECKPOINT_READERS)


def one_line(text: str) -> str:
    """Several lines joined with "; " (blank lines and indentation dropped)."""
    return "; ".join(line.strip() for line in str(text).splitlines() if line.strip())


def _subject_message(error: ValueError) -> str | None:
    """The validator's report on one line, or None when `error` is not a SubjectError."""
    subject = sys.modules.get("persona.data.subject")  # not imported: cannot be a SubjectError
    if subject is None or not isinstance(error, subject.SubjectError):
        return None
    problems = error.problems
    head = str(error).splitlines()[0]  # "subject ROOT: N problem(s)"
    listed = "; ".join(str(p) for p in problems[:MAX_LISTED_PROBLEMS])
    more = len(problems) - MAX_LISTED_PROBLEMS
    root = getattr(error, "root", None)
    tail = ""
    if more > 0:
        tail = f"; and {more} more" + (f" (`persona subject check {root}` lists them all)"
                                       if root is not None else "")
    return f"{head}: {listed}{tail}"


OS_ERROR_HINTS: dict[type, str] = {
    FileNotFoundError: "check the path",
    FileExistsError: "already there: pick another path or remove it",
    PermissionError: "not allowed: fix its permissions or pick a folder you can write to",
    IsADirectoryError: "a folder where a file is expected",
    NotADirectoryError: "part of the path is a file, not a folder",
}


def _os_error_message(error: OSError) -> str:
    """`path: reason; hint` for errno-style errors; our own message as it is."""
    if error.filename is None or error.strerror is None:
        return one_line(str(error))
    where = f"{error.filename}" + (f" -> {error.filename2}" if error.filename2 else "")
    hint = next((h for kind, h in OS_ERROR_HINTS.items() if isinstance(error, kind)), "")
    return f"{where}: {error.strerror}" + (f" ({hint})" if hint else "")


def _is_unreadable_image(error: BaseException) -> bool:
    pil = sys.modules.get("PIL")
    return pil is not None and isinstance(error, getattr(pil, "UnidentifiedImageError", ()))


def user_message(error: BaseException) -> str | None:
    """The one-line message for a user error, or None for anything else (a bug)."""
    if isinstance(error, UserError):
        return one_line(str(error))
    if isinstance(error, ValueError):
        subject = _subject_message(error)
        if subject is not None:
            return subject
    if isinstance(error, tuple(OS_ERROR_HINTS)):
        return _os_error_message(error)
    if _is_unreadable_image(error):
        return f"{one_line(str(error))}: not a readable image; re-save it as PNG or pick another"
    if isinstance(error, ValueError) and raised_by_own_code(error):
        return one_line(str(error))
    if raised_by_checkpoint_reader(error):
        first = one_line(str(error)) or type(error).__name__
        return f"a checkpoint is truncated or corrupt ({first}): {RERUN_HINT}"
    if _is_lightning_misconfiguration(error):
        return (f"the trainer settings conflict: {one_line(str(error))} (change the settings "
                "it names: a --trainer.* option or a callback in the config)")
    return None


def _is_lightning_misconfiguration(error: BaseException) -> bool:
    """Lightning's MisconfigurationException: settings that cannot work together (e.g.
    enable_progress_bar false with a progress-bar callback), a configuration error by name."""
    try:
        from lightning.fabric.utilities.exceptions import MisconfigurationException
    except ImportError:
        return False
    return isinstance(error, MisconfigurationException)


# ---------------------------------------------------------------------------- the wrapper
def run_user_command(command: str, function: Callable[[list[str]], int | None],
                     argv: Sequence[str], debug: bool = False) -> int:
    """function(argv) -> exit status; a user error becomes `persona <command>: <message>` on
    stderr and status 1. With debug, or for any other exception, the exception propagates
    (the console script prints its traceback and exits 1)."""
    if debug:
        return int(function(list(argv)) or 0)
    try:
        return int(function(list(argv)) or 0)
    except Exception as error:  # noqa: BLE001 (re-raised unless it is a user error)
        message = user_message(error)
        if message is None:
            raise
        print(f"persona {command}: {message}", file=sys.stderr)
        return EXIT_USER_ERROR


# ---------------------------------------------------------------------------- config typos
UNKNOWN_KEY_PATTERNS = (
    re.compile(r"does not accept option '([^']+)'"),  # a key in a --config file
    re.compile(r"Key \"([^\"]+)\" is not expected"),
)
UNRECOGNIZED = re.compile(r"unrecognized arguments: (.*)")


def unknown_keys(message: str) -> list[tuple[str, bool]]:
    """(mistyped key, given as a --option) for each unknown key an argument-parser error names;
    keys are dotted, without leading dashes."""
    keys = [(match.group(1), False) for pattern in UNKNOWN_KEY_PATTERNS
            for match in pattern.finditer(message)]
    unrecognized = UNRECOGNIZED.search(message)
    if unrecognized:
        keys += [(token.split("=", 1)[0].lstrip("-"), True)
                 for token in unrecognized.group(1).split() if token.startswith("--")]
    return keys


def nearest_keys(key: str, known: Iterable[str]) -> list[str]:
    """The valid keys closest to a mistyped one: same-section keys first, then any."""
    known = sorted(set(known))
    section, _, leaf = key.rpartition(".")
    siblings = [k.rpartition(".")[2] for k in known if k.rpartition(".")[0] == section]
    close = difflib.get_close_matches(leaf, siblings, MAX_SUGGESTIONS, SUGGESTION_CUTOFF)
    found = [f"{section}.{name}" if section else name for name in close]
    return found or difflib.get_close_matches(key, known, MAX_SUGGESTIONS, SUGGESTION_CUTOFF)


def suggestion(message: str, known: Iterable[str]) -> str:
    """"--a.bc: did you mean --a.b?" for each mistyped key of `message` that has a near valid
    key (joined with "; "); "" when none."""
    known = list(known)
    hints = []
    for key, as_option in unknown_keys(message):
        near = nearest_keys(key, known)
        dash = "--" if as_option else ""
        if near:
            hints.append(f"{dash}{key}: did you mean " + " or ".join(f"{dash}{k}" for k in near)
                         + "?")
    return "; ".join(hints)
