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


def test_openmp_defaults_apply_only_without_a_user_choice():
    from persona.cli import OPENMP_DEFAULTS, openmp_environment

    assert openmp_environment({"PATH": "/bin"}) == OPENMP_DEFAULTS
    assert OPENMP_DEFAULTS["GOMP_SPINCOUNT"] == "1000"  # a short spin, not libgomp's ~3 ms
    assert openmp_environment({"OMP_WAIT_POLICY": "PASSIVE"}) == {}
    assert openmp_environment({"GOMP_SPINCOUNT": "0"}) == {}


def test_openmp_defaults_are_set_before_torch_loads():
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    code = ("import sys, os, persona.cli; "
            "print('torch' in sys.modules, os.environ['GOMP_SPINCOUNT'], "
            "os.environ['OMP_WAIT_POLICY'])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=env, check=True)
    assert result.stdout.split() == ["False", "1000", "PASSIVE"]
