"""docs/config-reference.md, generated from `jaxtrain.defaults()` and the comments beside each
default in the code that defines it, so the defaults stay the one source of truth.

    python -m jaxtrain.config_reference --write docs/config-reference.md

A key's meaning is the comment on its line (or lines) where its default is set, else the block
of comment lines right above it. Sections are found by reading `run_config.defaults()`: each
`c.SECTION = module.function()` names the function that builds the section; keys the function
does not spell out (e.g. fields of a dataclass it expands) are looked up in that function's
module, where they must be unique. `missing()` lists keys without a meaning.
"""

from __future__ import annotations

import argparse
import ast
import functools
import importlib
import inspect
import io
import sys
import tokenize
from typing import Any, Callable

from ml_collections import ConfigDict

from jaxtrain.train import run_config

Site = tuple[int, int]  # first and last line of a default's definition


@functools.lru_cache(maxsize=None)
def _module_info(module_name: str):
  """(AST, {line: trailing comment}, {line: full-line comment}) of a module's source."""
  module = importlib.import_module(module_name)
  source = inspect.getsource(module)
  trailing, full = {}, {}
  for tok in tokenize.generate_tokens(io.StringIO(source).readline):
    if tok.type == tokenize.COMMENT:
      text = tok.string.lstrip("#").strip()
      line = tok.start[0]
      if tok.line[:tok.start[1]].strip():
        trailing[line] = text
      else:
        full[line] = text
  return ast.parse(source), trailing, full


def _meaning(module_name: str, site: Site) -> str:
  _, trailing, full = _module_info(module_name)
  first, last = site
  for line in range(first, last + 1):
    if line in trailing:
      return trailing[line]
  block, line = [], first - 1
  while line in full:
    block.insert(0, full[line])
    line -= 1
  return " ".join(block)


def _resolve_call(node: ast.AST, module) -> Callable | None:
  """The function a call like `f()` or `mod.f()` names in `module`'s namespace."""
  if not isinstance(node, ast.Call):
    return None
  parts, target = [], node.func
  while isinstance(target, ast.Attribute):
    parts.insert(0, target.attr)
    target = target.value
  if not isinstance(target, ast.Name):
    return None
  obj = getattr(module, target.id, None)
  for part in parts:
    obj = getattr(obj, part, None)
  return obj if inspect.isfunction(obj) else None


def _function_node(fn: Callable) -> ast.FunctionDef:
  tree = _module_info(fn.__module__)[0]
  for node in ast.walk(tree):
    if isinstance(node, ast.FunctionDef) and node.name == fn.__name__ and node.lineno == fn.__code__.co_firstlineno:
      return node
  raise LookupError(f"cannot find {fn.__module__}.{fn.__name__}")


def _sites_in(fn: Callable) -> dict[str, tuple[str, Site]]:
  """Relative key path -> (module, lines) for the defaults a function spells out: entries of
  dict literals (nested ones and calls of other defaults functions included) and `c.KEY = ...`
  assignments."""
  module = sys.modules[fn.__module__]
  sites: dict[str, tuple[str, Site]] = {}

  def visit_value(prefix: str, value: ast.AST, site: Site) -> None:
    sites[prefix] = (fn.__module__, site)
    if isinstance(value, ast.Dict):
      visit_dict(prefix + ".", value)
    inner = _resolve_call(value, module)
    if inner is None and isinstance(value, ast.Call) and value.args:  # ConfigDict({...})
      if isinstance(value.args[0], ast.Dict):
        visit_dict(prefix + ".", value.args[0])
      inner = _resolve_call(value.args[0], module)
    if inner is not None and inner is not fn:
      for key, found in _sites_in(inner).items():
        sites.setdefault(prefix + "." + key, found)

  def visit_dict(prefix: str, node: ast.Dict) -> None:
    for key, value in zip(node.keys, node.values):
      if isinstance(key, ast.Constant) and isinstance(key.value, str):
        visit_value(prefix + key.value, value, (key.lineno, value.end_lineno))

  for node in ast.walk(_function_node(fn)):
    if isinstance(node, ast.Return) and node.value is not None:
      call = node.value
      if isinstance(call, ast.Call) and call.args and isinstance(call.args[0], ast.Dict):
        visit_dict("", call.args[0])
      elif isinstance(call, ast.Dict):
        visit_dict("", call)
    elif isinstance(node, ast.Assign) and len(node.targets) == 1:
      target = node.targets[0]
      if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name):
        visit_value(target.attr, node.value, (node.lineno, node.end_lineno))
      elif isinstance(target, ast.Subscript) and isinstance(target.slice, ast.Constant):
        visit_value(str(target.slice.value), node.value, (node.lineno, node.end_lineno))
  return sites


@functools.lru_cache(maxsize=None)
def _module_fields(module_name: str) -> dict[str, list[Site]]:
  """Name -> every place a module defines a field of that name (class attributes, dict keys)."""
  tree = _module_info(module_name)[0]
  found: dict[str, list[Site]] = {}
  for node in ast.walk(tree):
    if isinstance(node, ast.ClassDef):
      for stmt in node.body:
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.value is not None:
          found.setdefault(stmt.target.id, []).append((stmt.lineno, stmt.end_lineno))
    elif isinstance(node, ast.Dict):
      for key, value in zip(node.keys, node.values):
        if isinstance(key, ast.Constant) and isinstance(key.value, str):
          found.setdefault(key.value, []).append((key.lineno, value.end_lineno))
  return found


def _flatten(config: ConfigDict, prefix: str = "") -> list[tuple[str, Any]]:
  rows = []
  for key in config.keys():
    value = config[key]
    path = f"{prefix}{key}"
    if isinstance(value, ConfigDict):
      rows += _flatten(value, path + ".")
    else:
      rows.append((path, value))
  return rows


def entries() -> list[dict[str, Any]]:
  """Every key of the defaults: section, path, default, meaning ("" when none is found).
  Open maps (`data.sources`) are documented once, as `PATH.NAME.KEY`, from their template."""
  defaults = run_config.defaults()
  root_sites = _sites_in(run_config.defaults)
  out = []
  for section in defaults.keys():
    value = defaults[section]
    module_name, _ = root_sites.get(section, (run_config.__name__, (0, 0)))
    if not isinstance(value, ConfigDict):
      site = root_sites.get(section)
      out.append({"section": "", "key": section, "default": value,
                  "meaning": _meaning(*site) if site else ""})
      continue
    builder = _resolve_call(_call_of(section), sys.modules[run_config.__name__])
    sites = _sites_in(builder) if builder else {}
    for path, default in _section_rows(section, value):
      rel = path[len(section) + 1:]
      lookup = rel.replace(".NAME.", ".main.") if ".NAME." in rel else rel
      out.append({"section": section, "key": path, "default": default,
                  "meaning": _lookup(builder, sites, lookup)})
  return out


def _section_rows(section: str, value: ConfigDict) -> list[tuple[str, Any]]:
  rows = []
  for path, default in _flatten(value, section + "."):
    for open_path, template in run_config.SCHEMA.open_maps.items():
      if path.startswith(open_path + "."):
        entry = path[len(open_path) + 1:].split(".", 1)
        if len(entry) == 2:
          path = f"{open_path}.NAME.{entry[1]}"
          default = template()[entry[1]]
    if path not in [r[0] for r in rows]:
      rows.append((path, default))
  return rows


def _call_of(section: str) -> ast.AST | None:
  for node in ast.walk(_function_node(run_config.defaults)):
    if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Attribute) and \
        node.targets[0].attr == section:
      return node.value
  return None


def _lookup(builder: Callable | None, sites: dict, rel: str) -> str:
  if rel in sites:
    return _meaning(*sites[rel])
  if builder is None:
    return ""
  # Fields the builder expands without spelling them out (a dataclass's, a template's); not
  # the keys other sections' builders spell out in the same module.
  others = [(fn.__module__, _function_node(fn)) for fn in _section_builders() if fn is not builder]
  candidates = []
  for name in {builder.__module__} | {m for m, _ in sites.values()}:
    for site in _module_fields(name).get(rel.rsplit(".", 1)[-1], []):
      if not any(m == name and node.lineno <= site[0] <= node.end_lineno for m, node in others):
        candidates.append((name, site))
  meanings = {_meaning(*c) for c in candidates} - {""}
  if len(meanings) > 1:  # a name two dataclasses share (model.qk_norm, model.vision.qk_norm)
    meanings = {_meaning(*c) for c in candidates if _owner_matches(c, rel)} - {""}
  return meanings.pop() if len(meanings) == 1 else ""


def _owner_matches(candidate: tuple[str, Site], rel: str) -> bool:
  """Whether the class defining a field is the one `rel` reaches: for `vision.KEY` a class named
  like the sub-section (VisionConfig); for a top-level key, a class no other class nests."""
  owner, nested = _classes(candidate[0])
  cls = owner.get(candidate[1])
  if cls is None:
    return False
  if "." in rel:
    return rel.rsplit(".", 2)[-2].replace("_", "") in cls.lower()
  return cls not in nested


@functools.lru_cache(maxsize=None)
def _classes(module_name: str) -> tuple[dict[Site, str], set[str]]:
  """(field site -> defining class, names of classes used as another class's field type)."""
  tree = _module_info(module_name)[0]
  owner, annotations, classes = {}, set(), set()
  for node in ast.walk(tree):
    if isinstance(node, ast.ClassDef):
      classes.add(node.name)
      for stmt in node.body:
        if isinstance(stmt, ast.AnnAssign) and stmt.value is not None:
          owner[(stmt.lineno, stmt.end_lineno)] = node.name
          if isinstance(stmt.annotation, ast.Name):
            annotations.add(stmt.annotation.id)
  return owner, annotations & classes


def _section_builders() -> list[Callable]:
  module = sys.modules[run_config.__name__]
  found = [_resolve_call(_call_of(section), module) for section in run_config.defaults().keys()]
  return [fn for fn in found if fn is not None]


def missing() -> list[str]:
  return [e["key"] for e in entries() if not e["meaning"]]


def _literal(value: Any) -> str:
  if isinstance(value, str):
    return '`""`' if value == "" else f'`"{value}"`'
  if isinstance(value, tuple):
    return f"`{value!r}`"
  return f"`{value!r}`"


def render() -> str:
  rows = entries()
  lines = [
      "# Configuration reference",
      "",
      "Every key of `jaxtrain.defaults()`, its default and what it means. Generated from the defaults",
      "and the comments beside them (`python -m jaxtrain.config_reference --write docs/config-reference.md`);",
      "`tests/test_config_reference.py` fails when this page is stale.",
      "",
      "A config file defines `get_config()` returning any subset of these keys; `--config.KEY=VALUE`",
      "overrides one on the command line (`jaxtrain train --config configs/quickstart.py",
      "--config.train.steps=100`). An unknown key is an error that suggests the closest known ones.",
      "`data.sources` is a map of named sources: `data.sources.NAME.*` are the keys of each (the",
      "defaults hold one source, `main`).",
      "",
  ]
  sections: dict[str, list[dict]] = {"": []}  # the top-level keys first
  for row in rows:
    sections.setdefault(row["section"], []).append(row)
  for section, items in sections.items():
    title = f"`{section}`" if section else "Top level"
    lines += [f"## {title}", ""]
    owner = None
    if section:
      builder = _resolve_call(_call_of(section), sys.modules[run_config.__name__])
      owner = builder.__module__.replace(".", "/") + ".py" if builder else None
      owner = owner.replace("jaxtrain/kernels/", "kernels/").replace("jaxtrain/converters/", "converters/") \
          if owner else None
    else:
      owner = "jaxtrain/train/run_config.py"
    if owner:
      lines += [f"Defined in `{owner}`.", ""]
    lines += ["| key | default | meaning |", "| --- | --- | --- |"]
    for row in items:
      meaning = row["meaning"].replace("|", "\\|")
      lines.append(f"| `{row['key']}` | {_literal(row['default'])} | {meaning} |")
    lines.append("")
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m jaxtrain.config_reference", description=__doc__.split("\n\n")[0])
  parser.add_argument("--write", metavar="PATH", help="write the page there instead of printing it")
  args = parser.parse_args(argv)
  gaps = missing()
  if gaps:
    print("error: no meaning (a comment beside the default) for: " + ", ".join(gaps), file=sys.stderr)
    return 1
  text = render()
  if args.write:
    with open(args.write, "w", encoding="utf-8") as f:
      f.write(text)
  else:
    print(text, end="")
  return 0


if __name__ == "__main__":
  sys.exit(main())
