"""Which code made a result: each component's declared version and a digest of its source.

A component is a generator, a calibrator, a task (the plugin classes) or the quantizer. Its
``version`` is a promise its author bumps when results change: it enters the cell identity and the
generator-cache key, so a new version recomputes. Its *digest* is a safety net for edits made
without a bump: a hash of the code of the module that defines it and of every project module that
module imports (transitively, read from the import statements), taken over the syntax tree without
docstrings, so comments, layout and docs never count as a change. Records and cache entries store
both; ``run`` and ``report`` name what was made by other code than the checkout's (docs/results.md).
"""
from __future__ import annotations

import ast
import functools
import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

QUANTIZER_VERSION = "2"  # bump when the quantizer's arithmetic or placement changes a result (2: PSAQ-ViT parity)
QUANTIZER_MODULES = ("harness.quant.convert", "harness.quant.calibrate", "harness.quant.capture", "harness.quant.learnable",
                     "harness.model.arch.timm_vit", "harness.model.arch.timm_swin", "harness.model.arch.mm_vit", "harness.model.arch.mm_swin")
PROJECT_PACKAGES = ("harness", "methods", "tasks")
FACADE = "harness.api"  # the plugin API and its namespaces only re-export: an import from one counts as one from
# the defining module


@dataclass(frozen=True)
class CodeVersion:
    """A component's declared version and the digest of the source behind it."""

    version: str
    digest: str

    def as_dict(self) -> dict[str, str]:
        return {"version": self.version, "digest": self.digest}


def plugin_code(plugin: type) -> CodeVersion:
    """The version (class attribute ``version``) and source digest of a plugin class."""
    return CodeVersion(str(getattr(plugin, "version", "1")), module_digest(plugin.__module__))


def quantizer_code() -> CodeVersion:
    """Every module of the quantizer's packages: the arithmetic and placement, and the instrumented
    model families, which are loaded on demand (so no import statement leads to them)."""
    return CodeVersion(QUANTIZER_VERSION, module_digest(*QUANTIZER_MODULES))


@functools.lru_cache(maxsize=None)
def module_digest(*module_names: str) -> str:
    """sha256 (16 hex digits) over the docstring-free syntax trees of ``module_names`` and their project imports.

    Modules outside the project's packages (installed libraries, outside plugins' dependencies)
    are not followed; an outside plugin's own module is.
    """
    digest = hashlib.sha256()
    for name in sorted(set().union(*(_project_closure(module) for module in module_names))):
        digest.update(name.encode() + b"\0" + _normalized_source(name).encode() + b"\0")
    return digest.hexdigest()[:16]


def _project_closure(root: str) -> set[str]:
    seen, pending = set(), [root]
    while pending:
        name = pending.pop()
        if name in seen or _source_path(name) is None:
            continue
        seen.add(name)
        pending.extend(imported for imported in _imports(name)
                       if imported.split(".")[0] in PROJECT_PACKAGES and imported not in seen)
    return seen


@functools.lru_cache(maxsize=None)
def _source_path(module_name: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(module_name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    return Path(spec.origin)


@functools.lru_cache(maxsize=None)
def _tree(module_name: str) -> ast.Module:
    return ast.parse(_source_path(module_name).read_text())


def _imports(module_name: str) -> set[str]:
    """Modules named by the import statements that run when ``module_name`` is imported, made absolute.

    Imports inside functions are left out: they load optional libraries or discover plugins (the
    registry imports the core's calibrators that way), and following them would tie every plugin's
    digest to the quantizer. ``from package import name`` adds ``package.name`` too, in case the
    name is a submodule.
    """
    path = _source_path(module_name)
    package = module_name if path.name == "__init__.py" else module_name.rpartition(".")[0]
    names: set[str] = set()
    for node in _import_time_nodes(_tree(module_name)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")
                parent = parent[:len(parent) - node.level + 1]
                base = ".".join(parent + ([node.module] if node.module else []))
            if base == FACADE or base.startswith(f"{FACADE}."):
                names.update(_facade_sources(base, [alias.name for alias in node.names]))
                continue
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    # a package's modules run its __init__ first
    for name in list(names):
        parts = name.split(".")
        names.update(".".join(parts[:i]) for i in range(1, len(parts)))
    return {name for name in names if name}


def _facade_sources(facade: str, imported: list[str]) -> set[str]:
    """The modules ``facade`` takes ``imported`` from, so a plugin's digest covers what it uses and no more."""
    sources = {alias.asname or alias.name: node.module for node in _tree(facade).body
               if isinstance(node, ast.ImportFrom) for alias in node.names}
    return {sources.get(name, facade) for name in imported}


def _import_time_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node outside function bodies (module level, class bodies, conditionals)."""
    for node in ast.iter_child_nodes(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            yield node
            yield from _import_time_nodes(node)


def _normalized_source(module_name: str) -> str:
    """The module's syntax tree without docstrings: comments, formatting and docs do not count."""
    tree = ast.parse(_source_path(module_name).read_text())
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree, annotate_fields=False)


def describe_difference(stored: dict[str, Any] | None, current: dict[str, dict[str, str]]) -> list[str]:
    """Components whose stored code differs from the checkout's, e.g. ``generator psaq: source changed``."""
    if not stored:
        return ["no code versions recorded (made before they were)"]
    differences = []
    for component, now in current.items():
        before = stored.get(component)
        if before is None:
            differences.append(f"{component}: not recorded")
        elif before.get("version") != now["version"]:
            differences.append(f"{component}: version {before.get('version')} -> {now['version']}")
        elif before.get("digest") != now["digest"]:
            differences.append(f"{component}: source changed")
    return differences
