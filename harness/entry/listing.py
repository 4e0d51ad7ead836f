"""What ``python -m harness list`` prints, and a cache of it that answers without importing any plugin.

Plugins register on import, and importing them loads torch, timm and scikit-learn (seconds). What ``list``
prints depends on nothing but the checkout's source and the environment, so whenever discovery alone has
filled the registries (:func:`harness.plugin.discovery.discover_plugins`, in any command of the CLI and in
:func:`harness.benchmark`, which ask for it with :func:`keep_cache_current`),
the listing is written to the user cache beside a digest of everything it could depend on
(:func:`source_digest`): every file under ``harness/``, ``methods/`` and ``tasks/`` (a new plugin folder
included, with no work of its own), ``pyproject.toml``, the source of entry-point plugins, the installed
distributions and the interpreter. The digest is taken before the first plugin is imported, so a file
edited during discovery makes the entry stale rather than wrong. ``list`` prints the cached listing when
its digest is the checkout's and imports the plugins otherwise; a cache file that cannot be read or has
another shape is named in one line and ignored (issue 34).
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable

from harness.plugin.discovery import ENTRY_POINT_GROUPS, discovered, observe_discovery
from harness.store.paths import PROJECT_ROOT

SOURCE_FOLDERS = ("harness", "methods", "tasks")  # everything a registered entry or the listing code is made of
SOURCE_FILES = ("pyproject.toml",)
ENTRY_POINT_PREFIX = "[dfq_harness."  # the section of entry_points.txt naming an outside plugin
SECTIONS = ("methods", "generators", "calibrators", "tuners", "tasks", "models", "bits")
SUPPORT = "support"
FORMAT = 1  # of the cache file; bump when its layout changes
MAX_CACHE_BYTES = 4 << 20  # the listing is a few KiB


def build_listing() -> dict[str, list]:
    """The listing from the registries (imports every plugin): ``[name, text]`` rows per section, and the
    lines of the support matrix."""
    from harness.plugin.registry import CALIBRATORS, GENERATORS, METHODS, MODELS, TASKS, TUNERS
    from harness.plugin.support import support_lines
    from harness.quant.bits import ACCEPTED_FORMS

    return {
        "methods": [[n, f"{m.generator} + {m.calibrator}{f' → {m.tuner}' if m.tuner else ''}: {m.description}"]
                    for n, m in METHODS.items()],
        "generators": [[n, _first_line(g)] for n, g in GENERATORS.items()],
        "calibrators": [[n, _first_line(c)] for n, c in CALIBRATORS.items()],
        "tuners": [[n, _first_line(t)] for n, t in TUNERS.items()],
        "tasks": [[n, ", ".join(t.metric_names)] for n, t in TASKS.items()],
        "models": [[n, f"[{e.task}] {e.description}"] for n, e in MODELS.items()],
        "bits": [["forms", ACCEPTED_FORMS]],
        SUPPORT: support_lines(),
    }


def _registered_outside_discovery() -> bool:
    """Whether a registry holds an entry discovery did not bring (a test's stand-in, a notebook's plugin).
    A process that has not imported the registries (they load torch) has registered nothing."""
    module = sys.modules.get("harness.plugin.registry")
    if module is None:
        return False
    registries = (module.METHODS, module.GENERATORS, module.CALIBRATORS, module.TUNERS, module.TASKS, module.MODELS)
    return any(registry.added_outside_discovery for registry in registries)


def _first_line(plugin: type) -> str:
    return (plugin.__doc__ or "").strip().splitlines()[0]


def listing() -> dict[str, list]:
    """The cached listing when it was made from this checkout's source, else the one the plugins give. A
    process that holds plugins already (discovered, or registered by a test or a notebook) lists those."""
    if discovered() or _registered_outside_discovery():
        return build_listing()
    cached = read_cache(source_digest())
    return cached if cached is not None else build_listing()


def source_digest() -> str:
    """A digest of every input of the listing: source files (paths and contents), installed distributions,
    entry-point plugins' packages, the interpreter and the cache format. Reads files only; imports nothing."""
    digest = hashlib.sha256(f"format {FORMAT}\n{sys.version}\n{sys.prefix}\n{PROJECT_ROOT}\n".encode())
    outside_packages = _installed(digest)
    for folder in SOURCE_FOLDERS:
        _hash_tree(digest, PROJECT_ROOT / folder, folder)
    for name in SOURCE_FILES:
        _hash_file(digest, PROJECT_ROOT / name, name)
    for package in sorted(outside_packages):
        _hash_package(digest, package)
    return digest.hexdigest()


def _installed(digest: Any) -> set[str]:
    """Hash the distributions on ``sys.path`` (folder names carry versions) and ``.pth`` files; return the
    top-level packages of the entry points in the ``dfq_harness.*`` groups (outside plugins)."""
    has_entry_points = False
    for entry in sys.path:
        try:
            names = sorted(os.listdir(entry or "."))
        except OSError:
            continue
        for name in names:
            if name.endswith((".dist-info", ".egg-info", ".egg-link", ".pth")):
                digest.update(f"installed {name}\n".encode())
                if name.endswith(".pth"):
                    _hash_file(digest, Path(entry or ".", name), name)
                elif _mentions_plugin_group(Path(entry or ".", name, "entry_points.txt")):
                    has_entry_points = True
    if not has_entry_points:
        return set()
    from importlib.metadata import entry_points

    packages = set()
    for group in ENTRY_POINT_GROUPS:
        for point in entry_points(group=group):
            digest.update(f"entry point {group} {point.name} {point.value}\n".encode())
            packages.add(point.value.partition(":")[0].partition(".")[0])
    return packages


def _mentions_plugin_group(path: Path) -> bool:
    try:
        return ENTRY_POINT_PREFIX in path.read_text(errors="replace")
    except OSError:
        return False


def _hash_package(digest: Any, package: str) -> None:
    """An entry-point plugin's top-level package, located without importing it."""
    from importlib.util import find_spec

    try:
        spec = find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        digest.update(f"missing package {package}\n".encode())
        return
    for location in spec.submodule_search_locations or []:
        _hash_tree(digest, Path(location), f"{package}:{location}")
    if not spec.submodule_search_locations and spec.origin:
        _hash_file(digest, Path(spec.origin), f"{package}:{spec.origin}")


def _hash_tree(digest: Any, folder: Path, label: str) -> None:
    for parent, folders, files in os.walk(folder):
        folders[:] = sorted(name for name in folders if name != "__pycache__")
        for name in sorted(files):
            if not name.endswith(".pyc"):
                path = Path(parent, name)
                _hash_file(digest, path, f"{label}/{path.relative_to(folder)}")


def _hash_file(digest: Any, path: Path, label: str) -> None:
    digest.update(f"file {label}\n".encode())
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as error:
        digest.update(f"unreadable {error.errno}\n".encode())
        return
    digest.update(f"{len(data)}\n".encode())
    digest.update(data)


def cache_path() -> Path:
    """One file per checkout and interpreter (two virtual environments do not overwrite each other's)."""
    from harness.store.paths import CACHE_VARIABLE

    root = Path(os.environ.get(CACHE_VARIABLE) or Path.home() / ".cache" / "dfq_harness")
    key = hashlib.sha256(f"{PROJECT_ROOT}\n{sys.prefix}".encode()).hexdigest()[:16]
    return root / "listing" / f"{key}.json"


def read_cache(digest: str) -> dict[str, list] | None:
    """The cached listing if it was made from the source ``digest`` describes; None otherwise. A file that
    is not a listing of the expected shape costs one line on stderr, never an exception."""
    path = cache_path()
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_CACHE_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as error:
        return _ignored(path, error.strerror or str(error))
    if len(data) > MAX_CACHE_BYTES:
        return _ignored(path, f"larger than {MAX_CACHE_BYTES >> 20} MiB")
    try:
        content = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        return _ignored(path, f"not JSON ({type(error).__name__})")
    problem = _shape_problem(content)
    if problem is not None:
        return _ignored(path, problem)
    return content["listing"] if content["digest"] == digest else None


def _shape_problem(content: Any) -> str | None:
    if not isinstance(content, dict) or set(content) != {"format", "digest", "listing"}:
        return "not a mapping of format, digest and listing"
    if content["format"] != FORMAT or not isinstance(content["digest"], str):
        return f"format {content['format']!r}, expected {FORMAT}"
    listing = content["listing"]
    if not isinstance(listing, dict) or set(listing) != {*SECTIONS, SUPPORT}:
        return f"the listing does not have the sections {', '.join((*SECTIONS, SUPPORT))}"
    for section in SECTIONS:
        rows = listing[section]
        if not isinstance(rows, list) or not all(isinstance(row, list) and len(row) == 2
                                                 and all(isinstance(text, str) for text in row) for row in rows):
            return f"section {section} is not a list of [name, text] rows"
    if not isinstance(listing[SUPPORT], list) or not all(isinstance(line, str) for line in listing[SUPPORT]):
        return f"section {SUPPORT} is not a list of lines"
    return None


def _ignored(path: Path, reason: str) -> None:
    print(f"note: ignoring the plugin listing cache {path} ({reason}); listing from the plugins", file=sys.stderr)
    return None


def keep_cache_current() -> None:
    """From now on, discovery in this process writes the listing cache (``run``, ``list``, ``report``,
    :func:`harness.benchmark`)."""
    observe_discovery(_on_discovery)


def _on_discovery() -> Callable[[], None]:
    digest = source_digest()  # before the first plugin is imported: an edit during discovery makes it stale
    return lambda: save_cache(digest)


def save_cache(digest: str) -> None:
    """Write the listing for ``digest`` (taken before discovery imported the plugins). Skipped when an
    entry was registered by anything but discovery (a test, a notebook): the listing would show what the
    source does not hold. A cache that cannot be written is no error: ``list`` imports the plugins."""
    from harness.store.io import write_json

    if _registered_outside_discovery():
        return
    try:
        content = {"format": FORMAT, "digest": digest, "listing": build_listing()}
    except Exception:  # noqa: BLE001 -- a plugin whose listing fails says so in `list`, not in every run
        return
    path = cache_path()
    try:
        if path.is_file() and path.stat().st_size <= MAX_CACHE_BYTES and json.loads(path.read_bytes()) == content:
            return
    except (OSError, ValueError, UnicodeDecodeError):
        pass
    try:
        write_json(path, content)
    except OSError:
        pass
