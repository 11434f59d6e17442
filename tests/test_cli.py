import subprocess
import sys

from persona.cli import TOOLS, main


def test_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("fit", "validate", "test", "predict", *TOOLS):
        assert command in out


def test_unknown_command_exits_2(capsys):
    assert main(["no-such-command"]) == 2
    assert "unknown command" in capsys.readouterr().err


def test_python_m_persona_is_the_console_script():
    result = subprocess.run([sys.executable, "-m", "persona", "--help"], capture_output=True,
                            text=True, check=False)
    assert result.returncode == 0
    assert "LightningCLI" in result.stdout
