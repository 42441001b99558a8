"""The package layering holds: each dlm_jax subpackage imports only the layers below it (README, "Architecture").

    launch -> benchmarks -> training -> evaluation -> sampling -> models -> diffusion, data -> special_tokens, errors

(`models` may use `diffusion`'s constants, e.g. losses.NEG_INF and SUBS; `diffusion` and `data` import no other
subpackage.) Nothing imports `launch` (but its own modules); `configs` imports only what declares the defaults it
reads: the model registry and the sampler's SamplerConfig.
"""
import ast

from conftest import REPO

ALLOWED = {
    "benchmarks": {"training", "evaluation", "sampling", "models", "diffusion", "data"},
    "training": {"evaluation", "sampling", "models", "diffusion", "data"},
    "evaluation": {"sampling", "models", "diffusion", "data"},
    "sampling": {"models", "diffusion", "data"},
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
  return found - {"special_tokens", "errors"}  # leaf modules every layer may use


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
      assert imported <= {"configs", "models", "sampling"}, (path, imported)
