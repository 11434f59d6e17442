"""Every option of every `persona` tool says what it does in its --help."""

from __future__ import annotations

import contextlib
import importlib
import io
import re

import pytest

from persona.cli import TOOLS

OPTION_LINE = re.compile(r"^  (-\S.*?)(?:\s{2,}(\S.*))?$")  # invocation, then its help if any


def options_without_help(help_text: str) -> list[str]:
    """The option invocations in an argparse --help text that have no help after them."""
    lines = help_text.splitlines()
    missing = []
    for i, line in enumerate(lines):
        match = OPTION_LINE.match(line)
        if match is None or match.group(2):
            continue
        following = lines[i + 1] if i + 1 < len(lines) else ""
        continued = following.startswith("   ") and not following.lstrip().startswith("-")
        if not continued:
            missing.append(match.group(1).strip())
    return missing


def test_the_checker_finds_an_option_without_help() -> None:
    text = ("options:\n  -h, --help  show this help message and exit\n"
            "  --variant {refined,base}\n  --device DEVICE  where it runs\n"
            "  --a-very-long-option-name A_VERY_LONG_OPTION_NAME\n"
            "                        its help on the next line\n  --last\n")
    assert options_without_help(text) == ["--variant {refined,base}", "--last"]


# the tools' own subcommands (argparse prints their options only under `tool sub --help`)
SUBCOMMANDS = [("body", "check"), ("body", "build"), ("body", "show"), ("subject", "check"),
               ("convert", "xhumans"), ("convert", "neuman")]


@pytest.mark.parametrize("words", [(tool,) for tool in sorted(TOOLS)] + SUBCOMMANDS,
                         ids=" ".join)
def test_every_option_has_help(words: tuple[str, ...]) -> None:
    module, function, _ = TOOLS[words[0]]
    main = getattr(importlib.import_module(module), function)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            code = main([*words[1:], "--help"])
        except SystemExit as exit_info:  # argparse's --help
            code = exit_info.code
    command = "persona " + " ".join(words)
    assert code in (0, None)
    assert out.getvalue().strip(), f"{command} --help printed nothing"
    assert options_without_help(out.getvalue()) == [], f"{command} --help"
