"""The `recognizers` command's entry point (its subcommands arrive with the recognizers)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from recognizers import __version__
from recognizers.cli import main


def test_no_command_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    assert "usage: recognizers" in capsys.readouterr().err


def test_version_and_unknown_command(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert __version__ in capsys.readouterr().out
    with pytest.raises(SystemExit) as info:
        main(["no-such-command"])
    assert info.value.code == 2


def test_module_entry_point_is_light():
    """`python -m recognizers --help` answers without importing torch or Lightning."""
    code = ("import runpy, sys\nsys.argv = ['recognizers', '--help']\n"
            "try:\n    runpy.run_module('recognizers', run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'lightning', 'gradio') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_synth_help_is_light():
    """`recognizers synth speech --help` answers without importing torch or soundfile."""
    code = ("import sys\nfrom recognizers.cli import main\n"
            "try:\n    main(['synth', 'speech', '--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'soundfile', 'lightning') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "--test-fraction" in proc.stdout
    assert proc.stdout.strip().splitlines()[-1] == "[]"
