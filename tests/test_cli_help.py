"""Every argparse command line: `--help` exits 0, names the command as the user types it, and explains each option,
with its default where it has one."""

import re
import subprocess
import sys

import pytest

MODULES = [
    "maskprop_jax.evaluation",
    "maskprop_jax.evaluation.bench",
    "maskprop_jax.data.prepare",
    "maskprop_jax.data.synthetic",
    "maskprop_jax.data.ytvis",
    "maskprop_jax.data.bench",
    "maskprop_jax.convert",
    "maskprop_jax.convert.parity",
    "maskprop_jax.inference.propagation_eval",
    "maskprop_jax.inference.resolution_cap",
    "maskprop_jax.linking.bench",
    "maskprop_jax.model.bench",
]
# Their --help must stay light: scoring, data preparation and conversion are started on machines without
# accelerators, and a flag typo should not cost a jax start-up.
WITHOUT_JAX = {"maskprop_jax.evaluation", "maskprop_jax.evaluation.bench", "maskprop_jax.data.prepare",
               "maskprop_jax.data.synthetic", "maskprop_jax.data.ytvis", "maskprop_jax.data.bench",
               "maskprop_jax.convert"}
_CHECK_IMPORTS = ("import runpy, sys\n"
                  "sys.argv = [{module!r}, '--help']\n"
                  "try:\n"
                  "  runpy.run_module({module!r}, run_name='__main__', alter_sys=True)\n"
                  "finally:\n"
                  "  sys.stderr.write('jax imported: %s' % ('jax' in sys.modules))\n")


@pytest.fixture(scope="module")
def helps():
  """module -> (exit code, stdout, stderr) of `python -m module --help`, run side by side: a few of them take
  seconds to import jax."""
  processes = {}
  for module in MODULES:
    command = ([sys.executable, "-c", _CHECK_IMPORTS.format(module=module)] if module in WITHOUT_JAX
               else [sys.executable, "-m", module, "--help"])
    processes[module] = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  results = {}
  for module, process in processes.items():
    stdout, stderr = process.communicate(timeout=300)
    results[module] = (process.returncode, stdout, stderr)
  return results


def _options(help_text: str) -> dict[str, str]:
  """Option (or positional) -> its help text, from the argument sections of a --help output."""
  options: dict[str, str] = {}
  current = None
  sections = re.split(r"\n(?=\S[^\n]*:\n)", help_text)
  for section in sections:
    if not section.startswith(("options:", "optional arguments:", "positional arguments:")):
      continue
    for line in section.splitlines()[1:]:
      entry = re.match(r"  (\S+(?: \S+)*?)(?:  +(\S.*))?$", line)
      if line.startswith("  ") and not line.startswith("   ") and entry:
        current = entry.group(1).split(", ")[-1].split()[0]
        options[current] = entry.group(2) or ""
      elif current is not None and line.strip():
        options[current] += " " + line.strip()
  return options


@pytest.mark.parametrize("module", MODULES)
def test_help_names_the_command_and_explains_every_option(helps, module):
  code, stdout, stderr = helps[module]
  assert code == 0, stderr
  assert stdout.startswith(f"usage: python -m {module} "), stdout.splitlines()[0]
  options = _options(stdout)
  assert "--help" in options and len(options) > 1, stdout
  for option, text in options.items():
    assert text.strip(), f"{module}: {option} has no help text"
  usage = stdout.split("\n\n")[0]
  for option, text in options.items():
    # An option that is not required and takes a value says what happens without it.
    takes_value = re.search(rf"\[{re.escape(option)} [^\]]", usage)
    if takes_value:
      assert "default" in text, f"{module}: {option} does not show its default: {text!r}"
  if module in WITHOUT_JAX:
    assert stderr.endswith("jax imported: False"), f"{module} --help imports jax"


@pytest.mark.parametrize("program", ["train.py", "eval.py"])
def test_the_absl_programs_help_exits_0_and_prints_no_library_chatter(program):
  root = __import__("pathlib").Path(__file__).resolve().parents[1]
  result = subprocess.run([sys.executable, program, "--help"], cwd=root, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]  # absl's own --help exits 1
  assert "--config" in result.stdout and "--workdir" in result.stdout
  for chatter in ("oneDNN", "tensorflow", "orbax", "absl::InitializeLog", "Unable to initialize backend"):
    assert chatter not in result.stdout + result.stderr, chatter
