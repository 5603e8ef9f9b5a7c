"""What a compiled XLA module's text says of each instruction: the JAX name stack and the Python stack that made it.

`parse_hlo(jitted.lower(*args).compile().as_text())` maps every HLO instruction name (the name a profiler trace's
events carry) to an `Op`: its `op_name` metadata (the JAX name stack: named scopes, and `transpose(...)` around
what the backward pass computes) parsed into scopes and a direction, and the Python frames of its
`stack_frame_id` (file, function, line), outermost first. A fusion takes the metadata of its costliest fused
instruction; an instruction that XLA left without metadata takes its neighbours' (see parse_hlo).
training/profile.py attributes a trace's time with it.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import re
from typing import Callable, Sequence


@dataclasses.dataclass(frozen=True)
class Frame:
  file: str
  function: str
  line: int


@dataclasses.dataclass(frozen=True)
class Op:
  """What the compiled program says of one HLO instruction (for a fusion: of its costliest fused instruction)."""

  name: str  # the instruction's name, which the trace events carry
  opcode: str
  op_name: str  # the JAX name stack, e.g. "jit(step)/transpose(jvp(backbone))/conv_general_dilated"; "" if none
  scopes: tuple[str, ...]  # the named scopes in op_name, outermost first, JAX's transforms and internals removed
  backward: bool | None  # True under a transpose (a custom_vjp's bwd rule too), False under jvp only, else None
  frames: tuple[Frame, ...]  # the Python stack that traced it, outermost first


_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*)$")
_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s*\(.*\{\s*$")
_OPCODE = re.compile(r"(?:^|[\s}\])])([a-z][a-z0-9\-]*)\(")
_CALLS = re.compile(r"calls=%?([\w.\-]+)")
_OP_NAME = re.compile(r'op_name="((?:[^"\\]|\\.)*)"')
_FRAME_ID = re.compile(r"stack_frame_id=(\d+)")
_TABLE_ROW = re.compile(r"^(\d+)\s+(.*)$")
# Opcodes whose time dominates a fusion that contains them, in this order; a fusion takes their metadata.
_HEAVY = ("convolution", "dot", "custom-call", "scatter", "sort", "select-and-scatter", "reduce-window", "gather")
# Name-stack entries that JAX adds itself (control flow, calls): not named scopes.
_INTERNAL = {"while", "body", "cond", "closed_call", "core_call", "remat", "checkpoint", "rematted_computation",
             "scan", "cond_fun", "body_fun", "branch", "custom_jvp_call", "custom_vjp_call", "shard_map"}
_TRANSFORMS = {"jvp", "transpose", "vmap", "pmap", "remat", "checkpoint", "custom_jvp_call", "custom_vjp_call",
               "shard_map", "xmap"}


def _split_top(text: str) -> list[str]:
  """text split at the '/' that are outside parentheses."""
  parts, depth, start = [], 0, 0
  for i, char in enumerate(text):
    depth += (char == "(") - (char == ")")
    if char == "/" and depth == 0:
      parts.append(text[start:i])
      start = i + 1
  parts.append(text[start:])
  return [p for p in parts if p]


def parse_op_name(op_name: str) -> tuple[tuple[str, ...], bool | None]:
  """(named scopes, backward) of an op_name: "jit(f)/transpose(jvp(a/b))/mul" -> (("a", "b"), True).

  The first entry (the jitted function) and the last (the primitive) are not scopes; nor are nested jits'
  function names, nor JAX's control-flow entries. backward: None when neither jvp nor transpose appears."""
  scopes: list[str] = []
  flags = {"jvp": False, "transpose": False}

  def walk(entries):
    for entry in entries:
      match = re.fullmatch(r"([\w.]+)\((.*)\)", entry, flags=re.S)
      if match:
        name, inner = match.groups()
        if name in flags:
          flags[name] = True
        if name in _TRANSFORMS:
          walk(_split_top(inner))
        continue  # jit(fn), pjit(fn): a nested jit's function name
      if entry not in _INTERNAL and not re.fullmatch(r"branch_\d+(_fun)?", entry):
        scopes.append(entry)

  entries = _split_top(op_name)
  walk(entries[1:-1] if len(entries) > 1 else [])
  backward = True if flags["transpose"] else (False if flags["jvp"] else None)
  return tuple(scopes), backward


def _tables(text: str) -> dict[str, dict[int, str]]:
  """The FileNames, FunctionNames, FileLocations and StackFrames tables at the top of the HLO text."""
  tables: dict[str, dict[int, str]] = {}
  current = None
  for line in text.splitlines():
    if line in ("FileNames", "FunctionNames", "FileLocations", "StackFrames"):
      current = tables.setdefault(line, {})
      continue
    match = _TABLE_ROW.match(line) if current is not None else None
    if match:
      current[int(match.group(1))] = match.group(2).strip().strip('"')
    elif line.strip() and not line.startswith(" "):
      current = None
  return tables


def _frames(tables: dict[str, dict[int, str]]) -> Callable[[int], tuple[Frame, ...]]:
  """stack_frame_id -> frames, outermost first. A frame's parent is `parent_frame_id - 1` (0: none), which is
  how the HLO printer writes it (checked on a known call chain in tests/training/test_profile.py)."""
  files, functions = tables.get("FileNames", {}), tables.get("FunctionNames", {})
  locations, frames = {}, {}
  for key, value in tables.get("FileLocations", {}).items():
    fields = dict(re.findall(r"(\w+)=(\d+)", value))
    locations[key] = Frame(files.get(int(fields.get("file_name_id", 0)), "?"),
                           functions.get(int(fields.get("function_name_id", 0)), "?"), int(fields.get("line", 0)))
  for key, value in tables.get("StackFrames", {}).items():
    fields = dict(re.findall(r"(\w+)=(\d+)", value))
    frames[key] = (int(fields.get("file_location_id", 0)), int(fields.get("parent_frame_id", 0)) - 1)

  @functools.lru_cache(maxsize=None)
  def lookup(frame_id: int) -> tuple[Frame, ...]:
    out, seen, current = [], set(), frame_id
    while current in frames and current not in seen:
      seen.add(current)
      location, parent = frames[current]
      if location in locations:
        out.append(locations[location])
      current = parent
    return tuple(reversed(out))

  return lookup


@dataclasses.dataclass
class _Instruction:
  name: str
  opcode: str
  calls: str  # the fused / called computation, "" if none
  operands: tuple[str, ...]
  op_name: str | None
  frame_id: int | None


def _operands(rest: str, opcode_end: int) -> tuple[str, ...]:
  """The %names between the opcode's parenthesis and its match."""
  depth, end = 1, opcode_end
  while end < len(rest) and depth:
    depth += (rest[end] == "(") - (rest[end] == ")")
    end += 1
  return tuple(re.findall(r"%([\w.\-]+)", rest[opcode_end:end]))


def _computations(lines: Sequence[str]) -> dict[str, list[_Instruction]]:
  computations: dict[str, list[_Instruction]] = {}
  current = None
  for line in lines:
    header = _COMPUTATION.match(line)
    if header and not line.startswith(" "):
      current = computations.setdefault(header.group(1), [])
      continue
    match = _INSTRUCTION.match(line) if current is not None else None
    if not match:
      continue
    name, rest = match.groups()
    opcode, op_name, frame_id, calls = (_OPCODE.search(rest), _OP_NAME.search(rest), _FRAME_ID.search(rest),
                                        _CALLS.search(rest))
    current.append(_Instruction(name, opcode.group(1) if opcode else "?", calls.group(1) if calls else "",
                                _operands(rest, opcode.end()) if opcode else (),
                                op_name.group(1) if op_name else None, int(frame_id.group(1)) if frame_id else None))
  return computations


def _neighbour_metadata(instructions: Sequence[_Instruction], labelled: dict[str, tuple[str, int | None]],
                        max_depth: int = 8) -> dict[str, tuple[str, int | None]]:
  """Metadata for the instructions of one computation that have none (XLA passes that rewrite a convolution's
  weight gradient or a max pool drop it): the nearest backward producer's within max_depth (whatever reads a
  cotangent is backward), else the nearest labelled producer's, else the nearest labelled consumer's."""
  users: dict[str, list[str]] = collections.defaultdict(list)
  producers = {i.name: i.operands for i in instructions}
  for instruction in instructions:
    for operand in instruction.operands:
      users[operand].append(instruction.name)

  def nearest(name: str, edges) -> tuple[tuple[str, int | None] | None, tuple[str, int | None] | None]:
    """(nearest labelled, nearest backward labelled) along edges, breadth first."""
    frontier, seen, first, backward = [name], {name}, None, None
    for _ in range(max_depth):
      frontier = [n for current in frontier for n in edges.get(current, ()) if n not in seen]
      seen.update(frontier)
      found = [labelled[n] for n in frontier if n in labelled]
      first = first or (found[0] if found else None)
      backward = next((f for f in found if parse_op_name(f[0])[1]), None)
      if backward or not frontier:
        break
    return first, backward

  inferred = {}
  for instruction in instructions:
    if instruction.name not in labelled:
      first, backward = nearest(instruction.name, producers)
      chosen = backward or first or nearest(instruction.name, users)[0]
      if chosen is not None:
        inferred[instruction.name] = chosen
  return inferred


def parse_hlo(text: str) -> tuple[str, dict[str, Op]]:
  """(module name, instruction name -> Op) of a compiled module's text (`compiled.as_text()`).

  A fusion (or a call) takes the metadata of its costliest inner instruction (a convolution, a dot, ...; see
  _HEAVY), else its own, else its root's: XLA gives a fusion the root's metadata, which for a matmul fused with
  the reduction after it names the reduction. Instructions without any take their neighbours'
  (_neighbour_metadata)."""
  lines = text.splitlines()
  module = lines[0].split()[1].rstrip(",") if lines and lines[0].startswith("HloModule") else ""
  frames_of = _frames(_tables(text))
  computations = _computations(lines)

  @functools.lru_cache(maxsize=None)
  def heavy(computation: str) -> tuple[str, int | None] | None:
    """(op_name, frame id) of the costliest instruction of a fused computation, or None."""
    instructions = computations.get(computation, [])
    for wanted in _HEAVY:
      for i in instructions:
        if i.opcode == wanted and i.op_name is not None:
          return i.op_name, i.frame_id
    for i in instructions:  # a fusion nested in this one
      inner = heavy(i.calls) if i.calls and i.opcode in ("fusion", "call") else None
      if inner is not None:
        return inner
    return None

  ops: dict[str, Op] = {}
  for instructions in computations.values():
    labelled = {}
    for i in instructions:
      chosen = heavy(i.calls) if i.calls and i.opcode in ("fusion", "call") else None
      if chosen is None and i.op_name is None and i.calls:
        chosen = next(((f.op_name, f.frame_id) for f in reversed(computations.get(i.calls, []))
                       if f.op_name is not None), None)
      if chosen is None and i.op_name is not None:
        chosen = (i.op_name, i.frame_id)
      if chosen is not None and chosen[0]:
        labelled[i.name] = chosen
    labelled.update(_neighbour_metadata(instructions, labelled))
    for i in instructions:
      op_name, frame_id = labelled.get(i.name, ("", None))
      scopes, backward = parse_op_name(op_name)
      frames = frames_of(frame_id) if frame_id is not None else ()
      ops[i.name] = Op(i.name, i.opcode, op_name, scopes, backward, frames)
  return module, ops
