"""The `editserve` command line parses; the delegated commands are listed."""

import pytest

from app.cli import DELEGATED, main


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exit:
        main(["--help"])
    assert exit.value.code == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ["serve", *DELEGATED])


def test_serve_takes_host_and_port(capsys):
    with pytest.raises(SystemExit) as exit:
        main(["serve", "--help"])
    assert exit.value.code == 0
    assert "--host" in capsys.readouterr().out


def test_unknown_command_is_an_error():
    with pytest.raises(SystemExit) as exit:
        main(["teach"])
    assert exit.value.code == 2


def test_a_harness_command_without_the_eval_extra_says_how_to_get_it(monkeypatch):
    import importlib

    real = importlib.import_module

    def without_tqdm(name, *args):
        if name == "evaluation.cli":
            raise ModuleNotFoundError("No module named 'tqdm'", name="tqdm")
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", without_tqdm)
    with pytest.raises(SystemExit) as stopped:
        main(["eval", "--help"])
    assert "editserve[eval]" in str(stopped.value.code) and "tqdm" in str(stopped.value.code)
