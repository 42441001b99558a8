"""The package layering holds: each dlm_jax subpackage imports only the layers below it (docs/architecture.md).

    launch -> benchmarks -> training -> evaluation -> sampling -> objectives, models -> diffusion, data
      -> special_tokens, errors

(`models` may use `diffusion`'s constants, e.g. losses.NEG_INF and SUBS; `objectives` builds on `diffusion` alone;
`diffusion` and `data` import no other subpackage.) Nothing imports `launch` (but its own modules); `configs` imports
only what declares the defaults it reads: the model and objective registries and the sampler's SamplerConfig.
A research wing (`dlm_jax/proj/NAME/`) may import any layer but `launch`, and nothing outside it imports it: the
registries name its components by import path (dlm_jax/registry.py).
"""
import ast

from conftest import REPO

ALLOWED = {
    "benchmarks": {"training", "evaluation", "sampling", "objectives", "models", "diffusion", "data"},
    "training": {"evaluation", "sampling", "objectives", "models", "diffusion", "data"},
    "evaluation": {"sampling", "objectives", "models", "diffusion", "data"},
    "sampling": {"objectives", "models", "diffusion", "data"},
    "objectives": {"diffusion"},
    "models": {"diffusion"},
    "diffusion": set(),
    "data": set(),
}


def imported_subpackages(path):
  """The dlm_jax subpackages (and the top-level modules `launch`/`configs`) a file imports."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
    names = []
    if isinstance(node, ast.Import):
      names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module:
      names = [node.module] + ([f"{node.module}.{a.name}" for a in node.names] if node.module == "dlm_jax" else [])
    for name in names:
      parts = name.split(".")
      if parts[0] == "dlm_jax" and len(parts) > 1:
        found.add(parts[1])
      elif parts[0] in ("launch", "configs"):
        found.add(parts[0])
  return found - {"special_tokens", "errors", "registry"}  # leaf modules every layer may use


def test_subpackages_import_only_the_layers_below_them():
  violations = []
  for package, allowed in ALLOWED.items():
    for path in sorted((REPO / "dlm_jax" / package).glob("*.py")):
      for imported in imported_subpackages(path) - allowed - {package}:
        violations.append(f"{path.relative_to(REPO)} imports {imported}")
  assert not violations, violations


def test_nothing_imports_launchers_and_configs_import_only_the_registries():
  for path in sorted((REPO / "dlm_jax").rglob("*.py")) + sorted((REPO / "configs").glob("*.py")):
    imported = imported_subpackages(path)
    assert "launch" not in imported, path
    if path.parent.name == "configs":
      assert imported <= {"configs", "models", "objectives", "sampling", "proj"}, (path, imported)


def test_nothing_outside_a_wing_imports_it():
  """No module of the library, no launcher and no config imports dlm_jax.proj (a wing's own files may)."""
  paths = [p for p in sorted((REPO / "dlm_jax").rglob("*.py")) if "proj" not in p.relative_to(REPO).parts]
  paths += sorted((REPO / "launch").glob("*.py")) + sorted((REPO / "configs").glob("*.py"))
  importers = [str(path.relative_to(REPO)) for path in paths if "proj" in imported_subpackages(path)]
  assert not importers, importers
  wings = [p for p in (REPO / "dlm_jax" / "proj").iterdir() if p.is_dir() and (p / "__init__.py").exists()]
  assert wings and all((wing / "README.md").exists() for wing in wings), wings


def module_imports():
  """{module: the dlm_jax modules it imports} over every file of dlm_jax (imports inside functions too):
  `from pkg import name` counts as importing pkg.name when that is a module, else pkg (its __init__)."""
  modules = {}
  for path in sorted((REPO / "dlm_jax").rglob("*.py")):
    name = ".".join(path.relative_to(REPO).with_suffix("").parts)
    modules[name.removesuffix(".__init__")] = path
  edges = {}
  for name, path in modules.items():
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
      if isinstance(node, ast.Import):
        found.update(alias.name for alias in node.names)
      elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
          base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
        found.update(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names)
    edges[name] = {target for target in found if target in modules and target != name}
  return edges


def test_no_module_imports_one_that_imports_it_back():
  """No import circle of any length between the modules of dlm_jax (a package __init__ that re-exports its modules
  is not a circle: its modules import their siblings by name)."""
  edges = module_imports()
  circles = []
  for start in edges:  # a depth-first search for a path back to `start`
    stack, seen = [(start, (start,))], set()
    while stack:
      node, path = stack.pop()
      for nxt in edges[node]:
        if nxt == start:
          circles.append(" -> ".join(path + (start,)))
        elif nxt not in seen:
          seen.add(nxt)
          stack.append((nxt, path + (nxt,)))
  assert not circles, sorted(set(circles))[:10]


def test_special_ids_come_from_the_tokenizer():
  """Past the tokenizers, no module or notebook names our fixed ids (special_tokens.PAD/BOS/EOS/MASK/UNK or
  NEVER_SAMPLED): a Hugging Face tokenizer's ids differ, so each site reads `tokenizer.special` or the SpecialIds its
  caller built from it (special_tokens.DEFAULT where a module means our ids on purpose)."""
  import re
  fixed = re.compile(r"special_tokens\.(PAD|BOS|EOS|MASK|UNK|NEVER_SAMPLED)\b|"
                     r"from dlm_jax\.special_tokens import .*\b(PAD|BOS|EOS|MASK|UNK|NEVER_SAMPLED)\b")
  exempt = {REPO / "dlm_jax" / "special_tokens.py", REPO / "dlm_jax" / "data" / "tokenizers.py"}
  paths = [p for folder in ("dlm_jax", "launch", "configs", "notebooks") for pattern in ("*.py", "*.ipynb")
           for p in sorted((REPO / folder).rglob(pattern)) if p not in exempt]
  named = [f"{p.relative_to(REPO)}:{i}" for p in paths
           for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if fixed.search(line)]
  assert not named, named
