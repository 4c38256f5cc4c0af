"""Every command answers ``--help`` (with its defaults) and ``regionmir --version`` answers."""

from __future__ import annotations

import pytest

from regionmir.cli import build_parser, main, plugin_commands


def _commands() -> list[str]:
    builtin = next(a for a in build_parser()._actions if a.dest == "command").choices
    return sorted(set(builtin) | set(plugin_commands()))


def test_the_layers_commands_are_installed():
    assert {"pretrain", "finetune", "index", "evaluate", "serve", "delete", "synth"} <= set(_commands())


@pytest.mark.parametrize("command", _commands())
def test_every_command_prints_its_help(command, capsys):
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0
    printed = capsys.readouterr().out
    assert printed.startswith("usage:") and "--help" in printed


def test_help_shows_defaults_once_and_version_answers(capsys):
    with pytest.raises(SystemExit):
        main(["index", "--help"])
    printed = " ".join(capsys.readouterr().out.split())
    assert "encoder actors (default: 1)" in printed and "(default: 0.05)" in printed
    assert "(default 256; larger on a GPU)" in printed and "(default: 256)" not in printed  # said once
    assert "(default: None)" not in printed and "(default: False)" not in printed
    with pytest.raises(SystemExit):
        main(["synth", "--help"])
    printed = " ".join(capsys.readouterr().out.split())
    assert "(default: 0)" in printed  # a zero default is still shown
    assert "(default: realistic)" not in printed  # its help text already names its default
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.startswith("regionmir ")
