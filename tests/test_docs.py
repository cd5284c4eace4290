"""The docs stay true: README.md is a short map, every command in README.md and docs/*.md names
an entry point, flags and files that exist, and every relative link resolves.

Commands are read from ``` code blocks (a line ending in a backslash continues on the next;
text after `#` is a comment). `python -m experiments.NAME` must name a module of experiments/
and only flags that entry point defines (each entry point's flags are listed by importing it in
a subprocess of its own, as the command would); `python scripts/NAME.py` must name a script,
and where the script defines its flags in its own file (absl `flags.DEFINE_*` or argparse
`add_argument`), only those. `--noNAME` is NAME's negation when NAME is a boolean absl flag.
"""

import ast
import functools
import glob
import os
import re
import shlex
import subprocess
import sys
from concurrent import futures

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = ["README.md"] + sorted(
  os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "*.md"))
)
README_MAX_LINES = 200

#: Flags absl handles itself: parsed before any module's flags, or defined by app.run.
ABSL_BUILTIN = {
  "flagfile",
  "undefok",
  "help",
  "helpshort",
  "helpfull",
  "helpxml",
  "only_check_args",
}
#: Flags of other tools that the docs mention in passing (XLA, SLURM, TensorBoard).
OTHER_TOOLS = {
  "xla_force_host_platform_device_count",
  "requeue",
  "nodes",
  "gpus-per-node",
  "logdir",
}

_ENTRY = re.compile(r"python\S*\s+-m\s+experiments\.(\w+)(.*)")
_SCRIPT = re.compile(r"python\S*\s+(scripts/[\w.-]+)(.*)")
_SEPARATOR = re.compile(r"\s(?:&&|\|\||;|\|)\s")
_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
_CONFIG = re.compile(r"(?<![\w/*.-])(?:experiments/configs/)?([\w-]+\.flags)\b")
_SCRIPT_PATH = re.compile(r"(?<![\w/.-])(scripts/[\w.-]+\.(?:py|sh|sbatch|txt))\b")


def _read(doc: str) -> str:
  with open(os.path.join(ROOT, doc), encoding="utf-8") as f:
    return f.read()


def _code_lines(text: str) -> list[tuple[int, str]]:
  """(line number, logical line) of the ``` blocks: continuations joined, comments dropped."""
  out, inside, pending, start = [], False, "", 0
  for number, line in enumerate(text.splitlines(), 1):
    if line.lstrip().startswith("```"):
      inside = not inside
      continue
    if not inside:
      continue
    line = re.sub(r"(^|\s)#.*", "", line).rstrip()
    if not pending:
      start = number
    if line.endswith("\\"):
      pending += line[:-1] + " "
      continue
    out.append((start, pending + line))
    pending = ""
  return out


def _prose(text: str) -> str:
  """The text outside ``` blocks."""
  return "\n".join(re.split(r"^\s*```.*$", text, flags=re.M)[::2])


def _commands_in(text: str) -> list[tuple[int, str, str, list[str]]]:
  """(line, 'experiments.NAME' or 'scripts/NAME.py', the command, its --flag words)."""
  out = []
  for number, line in _code_lines(text):
    for part in _SEPARATOR.split(line):
      for pattern, kind in ((_ENTRY, "experiments."), (_SCRIPT, "")):
        match = pattern.search(part)
        if not match:
          continue
        try:
          words = shlex.split(match.group(2))
        except ValueError:  # an unbalanced quote: take the words as they are
          words = match.group(2).split()
        flags = []
        for word in words:
          word = word.strip("[]")
          if word == "--":  # what follows goes to another program (sweep.py -> train)
            break
          if word.startswith("--") and len(word) > 2:
            flags.append(word)
        out.append((number, kind + match.group(1), part.strip(), flags))
  return out


def _all_commands() -> list[tuple[str, int, str, str, list[str]]]:
  return [(doc, *command) for doc in DOCS for command in _commands_in(_read(doc))]


_LIST_FLAGS = (
  "import experiments.{name} as m\n"
  "from absl import app, flags\n"
  "app.define_help_flags()\n"
  "for n in flags.FLAGS: print(n, int(bool(flags.FLAGS[n].boolean)))\n"
)


@functools.cache
def _entry_point_flags() -> dict[str, dict[str, bool]]:
  """For each entry point the docs name: {flag: whether it is boolean}, one subprocess each
  (they run side by side)."""
  names = sorted(
    {target.split(".", 1)[1] for *_, target, _, _ in _all_commands() if "." in target}
    & {
      os.path.splitext(p)[0]
      for p in os.listdir(os.path.join(ROOT, "experiments"))
      if p.endswith(".py") and not p.startswith("_")
    }
  )

  def run(name):
    return subprocess.run(
      [sys.executable, "-c", _LIST_FLAGS.format(name=name)],
      cwd=ROOT,
      capture_output=True,
      text=True,
      timeout=120,
      env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )

  with futures.ThreadPoolExecutor(len(names) or 1) as pool:
    done = dict(zip(names, pool.map(run, names)))
  flags = {}
  for name, out in done.items():
    assert out.returncode == 0, f"importing experiments.{name} failed:\n{out.stderr[-3000:]}"
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    listed = dict(line.rsplit(" ", 1) for line in out.stdout.splitlines() if line.strip())
    flags[name] = {n: b == "1" for n, b in listed.items()} | dict.fromkeys(ABSL_BUILTIN, False)
  return flags


@functools.cache
def _script_flags(path: str) -> dict[str, bool] | None:
  """{flag: boolean} a script defines in its own file, or None when it defines none there."""
  with open(os.path.join(ROOT, path), encoding="utf-8") as f:
    tree = ast.parse(f.read())
  flags, uses_absl = {}, False
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module == "absl" and node.names:
      uses_absl |= any(a.name == "flags" for a in node.names)
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
      continue
    strings = [
      a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)
    ]
    if node.func.attr.startswith("DEFINE_") and strings:
      flags[strings[0]] = node.func.attr in ("DEFINE_bool", "DEFINE_boolean")
    elif node.func.attr == "add_argument":
      flags.update((s[2:], False) for s in strings if s.startswith("--"))
  if not flags:
    return None
  if uses_absl:
    flags |= dict.fromkeys(ABSL_BUILTIN, False)
  else:
    flags["help"] = False
  return flags


def _unknown_flag(word: str, known: dict[str, bool]) -> str | None:
  name = word[2:].split("=", 1)[0]
  if name in known or (name.startswith("no") and known.get(name[2:])):
    return None
  return name


def _problems(commands) -> list[str]:
  """What is wrong with each (doc, line, target, command, flags)."""
  problems = []
  entry_points = None
  for doc, number, target, command, flags in commands:
    where = f"{doc}:{number}: {command}"
    if target.startswith("experiments."):
      name = target.split(".", 1)[1]
      if not os.path.isfile(os.path.join(ROOT, "experiments", name + ".py")):
        problems.append(f"{where}\n  experiments/{name}.py does not exist")
        continue
      entry_points = entry_points or _entry_point_flags()
      known = entry_points[name]
    else:
      if not os.path.isfile(os.path.join(ROOT, target)):
        problems.append(f"{where}\n  {target} does not exist")
        continue
      known = _script_flags(target) if target.endswith(".py") else None
      if known is None:
        continue
    for word in flags:
      unknown = _unknown_flag(word, known)
      if unknown:
        problems.append(f"{where}\n  --{unknown}: not a flag of {target}")
      name, _, value = word[2:].partition("=")
      if name.endswith("flagfile") and value and not os.path.isfile(os.path.join(ROOT, value)):
        problems.append(f"{where}\n  --{name}={value}: no such file")
  return problems


def test_docs_have_commands():
  targets = {target for *_, target, _, _ in _all_commands()}
  assert {"experiments.train", "experiments.evaluate", "experiments.apply"} <= targets, targets


@pytest.mark.slow
def test_every_command_names_an_entry_point_and_its_flags():
  problems = _problems(_all_commands())
  assert not problems, "\n".join(problems)


def test_a_made_up_flag_or_entry_point_is_caught():
  """The check itself: a flag that does not exist, a negation of a non-boolean flag, a missing
  flagfile and a missing entry point are reported; real ones are not."""
  text = (
    "```bash\n"
    "python -m experiments.train --flagfile=experiments/configs/ae_digits.flags \\\n"
    "    --workdir=/tmp/w --noprobe --no_such_flag=1   # --also_not_checked\n"
    "python -m experiments.train --nonum_steps --flagfile=experiments/configs/none.flags\n"
    "python -m experiments.no_such_entry_point --workdir=w\n"
    "python scripts/sweep.py --grid 'seed=0,1' --not_a_sweep_flag -- --num_steps=5\n"
    "```\n"
  )
  commands = [("made-up", *command) for command in _commands_in(text)]
  details = [d for p in _problems(commands) for d in p.splitlines()[1:]]
  problems = "\n".join(details)
  for expected in (
    "--no_such_flag",
    "--nonum_steps",
    "configs/none.flags: no such file",
    "no_such_entry_point.py does not exist",
    "--not_a_sweep_flag",
  ):
    assert expected in problems, problems
  assert len(details) == 5, problems  # nothing else: --noprobe, --grid, the comment are fine


def test_every_config_and_script_the_docs_name_exists():
  missing = []
  for doc in DOCS:
    text = _read(doc)
    for config in sorted(set(_CONFIG.findall(text))):
      if config.removesuffix(".flags").isupper():  # a placeholder: NAME.flags
        continue
      if not os.path.isfile(os.path.join(ROOT, "experiments", "configs", config)):
        missing.append(f"{doc}: experiments/configs/{config}")
    for script in sorted(set(_SCRIPT_PATH.findall(text))):
      if not os.path.isfile(os.path.join(ROOT, script)):
        missing.append(f"{doc}: {script}")
  assert not missing, "\n".join(missing)


def test_flags_named_in_the_prose_exist():
  """`--NAME` in the prose names a flag of some entry point or script (or of XLA, SLURM)."""
  known = set(OTHER_TOOLS)
  for flags in _entry_point_flags().values():
    known |= set(flags) | {"no" + n for n, boolean in flags.items() if boolean}
  for path in glob.glob(os.path.join(ROOT, "scripts", "*.py")):
    flags = _script_flags(os.path.relpath(path, ROOT)) or {}
    known |= set(flags) | {"no" + n for n, boolean in flags.items() if boolean}
  unknown = []
  for doc in DOCS:
    for name in sorted(set(re.findall(r"(?<![\w-])--([a-z][\w-]*)", _prose(_read(doc))))):
      if name not in known:
        unknown.append(f"{doc}: --{name}")
  assert not unknown, "\n".join(unknown)


def test_readme_is_a_short_map():
  lines = _read("README.md").splitlines()
  assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines"
  assert 'scripts/test.sh -m "not slow"' in "\n".join(lines)


def _slug(heading: str) -> str:
  """GitHub's anchor of a heading."""
  text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
  return text.replace(" ", "-")


def _anchors(doc: str) -> set[str]:
  seen: dict[str, int] = {}
  anchors = set()
  for line in _prose(_read(doc)).splitlines():
    match = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
    if match:
      slug = _slug(match.group(1))
      anchors.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
      seen[slug] = seen.get(slug, 0) + 1
  return anchors


@pytest.mark.parametrize("doc", DOCS)
def test_relative_links_resolve(doc):
  broken = []
  for target in _LINK.findall(_prose(_read(doc))):
    if re.match(r"[a-z]+:", target):  # https:, mailto:
      continue
    path, _, anchor = target.partition("#")
    resolved = os.path.normpath(
      os.path.join(ROOT, os.path.dirname(doc), path or os.path.basename(doc))
    )
    if not os.path.exists(resolved):
      broken.append(f"{target}: no such file")
    elif anchor and resolved.endswith(".md") and anchor not in _anchors(resolved):
      broken.append(f"{target}: no heading #{anchor}")
  assert not broken, f"{doc}:\n" + "\n".join(broken)
