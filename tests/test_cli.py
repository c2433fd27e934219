"""The command line as people meet it: `--help` lists the commands they type, and names the steps the rules
run in a section of their own; pyproject.toml installs it as a console script."""
import re
import subprocess
import sys
import tomllib
from importlib import import_module

import pytest

from pipeline_src.__main__ import USER_COMMANDS, main
from pipeline_src.spec.config import REPO_ROOT

PEOPLE = {"check", "status", "missing", "report", "ui", "run", "track-resync"}
STEPS = {"check-models", "prepare", "train", "evaluate", "aggregate", "audit", "track-init", "track-set", "track-audit"}


def sections(text: str) -> dict[str, str]:
    """'heading:' -> the lines under it, up to the next blank line."""
    return {m.group(1): m.group(2) for m in re.finditer(r"^(\S[^\n]*):\n((?:  [^\n]*\n?)+)", text, flags=re.M)}


def test_help_lists_the_commands_people_type_and_groups_the_rules_steps():
    done = subprocess.run([sys.executable, "-m", "pipeline_src", "--help"], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: python -m pipeline_src COMMAND [options]")
    found = sections(done.stdout)
    listed = [line.split()[0] for line in found["commands"].splitlines()]
    assert listed == list(USER_COMMANDS) and set(listed) == PEOPLE
    steps_heading = next(h for h in found if h.startswith("steps the workflow's rules run"))
    assert {name.strip() for name in found[steps_heading].split(",")} == STEPS
    for line in found["commands"].splitlines():  # one line each, and a steady width
        assert len(line) <= 100, line


@pytest.mark.parametrize("name", sorted(PEOPLE | STEPS))
def test_every_command_still_parses_and_has_its_own_help(name, capsys):
    with pytest.raises(SystemExit) as stop:
        main([name, "--help"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.startswith("usage: ")


def test_pyproject_installs_a_console_script_for_main(monkeypatch, capsys):
    scripts = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    [(name, target)] = scripts.items()
    module, function = target.split(":")
    assert getattr(import_module(module), function) is main
    monkeypatch.setattr(sys, "argv", [f"/venv/bin/{name}", "--help"])  # as the installed script calls it
    with pytest.raises(SystemExit):
        main()
    assert capsys.readouterr().out.startswith(f"usage: {name} COMMAND [options]")


def test_an_unknown_command_is_one_line_naming_it(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["trian"])
    assert stop.value.code == 2
    assert "invalid choice: 'trian'" in capsys.readouterr().err
