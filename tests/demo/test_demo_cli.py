"""The demo's command line: every option's help states its default, and bad values are refused before any work."""

import pytest

from maskprop_jax.demo import cli


def test_help_exits_0_and_every_option_has_help_with_its_default(capsys):
  with pytest.raises(SystemExit) as exit_info:
    cli.parse_args(["--help"])
  assert exit_info.value.code == 0
  out = capsys.readouterr().out
  assert out.startswith("usage: python -m maskprop_jax.demo ")
  options = [action for action in cli.build_parser()._actions if action.dest != "help"]
  assert {"--score-thresh", "--min-track-length", "--fps"} <= {o for a in options for o in a.option_strings}
  for action in options:
    assert action.help and "default" in action.help, f"{action.option_strings}: help must state the default"
    assert action.option_strings[0] in out


@pytest.mark.parametrize("extra, message", [
    (["--video", "v.mp4", "--score-thresh", "1.5"], "--score-thresh must be between 0 and 1"),
    (["--video", "v.mp4", "--score-thresh", "nan"], "--score-thresh must be between 0 and 1"),
    (["--video", "v.mp4", "--min-track-length", "0"], "--min-track-length must be at least 1"),
    (["--image", "i.png", "--min-track-length", "3"], "--min-track-length is for videos"),
    (["--video", "v.mp4", "--fps", "0"], "--fps must be a positive number"),
])
def test_bad_values_are_refused_with_usage(capsys, extra, message):
  with pytest.raises(SystemExit) as exit_info:
    cli.parse_args(["--params", "weights", "--json", "out.json"] + extra)
  assert exit_info.value.code == 2
  assert message in capsys.readouterr().err
