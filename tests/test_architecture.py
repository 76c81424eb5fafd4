"""The layout's rules, checked on the source: the two halves of scene/ never import each other, scripts
never import scripts, the code's maths references resolve, domain errors share one base class."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = {"train", "render", "metrics", "view"}


def _imports(path: Path) -> set[str]:
    """Every module name ``path`` imports, wherever the import statement stands (TYPE_CHECKING too)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _python_files(*folders: str) -> list[Path]:
    return sorted(p for f in folders for p in (REPO / f).rglob("*.py"))


@pytest.mark.parametrize("side,other", [("data", "model"), ("model", "data")])
def test_scene_halves_do_not_import_each_other(side, other):
    offenders = {str(p.relative_to(REPO)): sorted(m for m in _imports(p) if m.startswith(f"scene.{other}"))
                 for p in _python_files(f"scene/{side}")}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_libraries_and_bench_never_import_scripts():
    files = _python_files("scene", "flame", "gaussian_renderer", "utils", "preprocessing", "bench")
    files += [REPO / f"{s}.py" for s in SCRIPTS]
    offenders = {str(p.relative_to(REPO)): sorted(_imports(p) & SCRIPTS) for p in files}
    assert {k: v for k, v in offenders.items() if v} == {}


# Floors from the bottom; a module imports only from its own floor or below. The tracker (and the video
# pipeline that ends in it) sits above the trainer: its avatar stage trains an avatar.
LAYERS = [("utils",), ("flame",), ("gaussian_renderer",), ("scene.data", "scene.model"), ("preprocessing",),
          ("scene.assemble", "scene.trainer", "scene.rendering"),
          ("preprocessing.track", "preprocessing.video_to_subject")]


def _floor(module: str) -> int | None:
    """The floor of the most specific prefix naming ``module`` (preprocessing.track before preprocessing)."""
    hits = [(len(p), k) for k, prefixes in enumerate(LAYERS) for p in prefixes
            if module == p or module.startswith(p + ".")]
    return max(hits)[1] if hits else None


def test_no_import_runs_back_up():
    """utils < flame < gaussian_renderer < scene.data, scene.model < preprocessing < scene.assemble,
    scene.trainer, scene.rendering < preprocessing.track, preprocessing.video_to_subject < the scripts."""
    for p in _python_files("utils", "flame", "gaussian_renderer", "scene", "preprocessing"):
        module = ".".join(p.relative_to(REPO).with_suffix("").parts)
        own = _floor(module.removesuffix(".__init__"))
        if own is None:
            continue  # scene/__init__.py: documentation only
        up = sorted(m for m in _imports(p) if (f := _floor(m)) is not None and f > own)
        assert not up, f"{p.relative_to(REPO)} imports {up} from a higher floor"


def test_maths_references_resolve():
    """Every "docs/maths.md section N" the code cites names a section the document has."""
    doc = (REPO / "docs" / "maths.md").read_text()
    sections = {int(m) for m in re.findall(r"^## (\d+)\. ", doc, flags=re.M)}
    assert sections == set(range(1, 13))
    cited: dict[int, list[str]] = {}
    files = [p for p in REPO.rglob("*") if p.suffix in {".py", ".md", ".cu", ".h", ".sh"}
             and not any(part.startswith(".") or part in ("build", "venv", "site-packages")
                         for part in p.relative_to(REPO).parts)]
    for p in files:
        for m in re.finditer(r"docs/maths\.md sections? (\d+)(?:(?:, | and | ?- ?)(\d+))?", p.read_text()):
            for n in m.groups():
                if n is not None:
                    cited.setdefault(int(n), []).append(str(p.relative_to(REPO)))
    assert cited, "no code cites docs/maths.md"
    assert set(cited) <= sections, {n: cited[n] for n in set(cited) - sections}
    stale = [str(p.relative_to(REPO)) for p in files if re.search(r"\bSPEC (section|\d)", p.read_text())]
    assert stale == [], "references to the out-of-repo SPEC instead of docs/maths.md"


def test_domain_errors_share_one_base():
    """Every project error class derives from utils.errors.InputError (the scripts catch that one)."""
    import importlib
    import inspect

    from utils.errors import InputError

    modules = ["flame.assets", "flame.obj", "flame.safe_pickle", "scene.data.subject", "scene.data.tracking",
               "scene.model.checkpoint", "utils.image_io", "utils.lpips_loader", "utils.video",
               "preprocessing.frames_io", "preprocessing.rvm", "render", "metrics", "utils.device",
               "scene.viewer", "view"]
    errors = []
    for name in modules:
        mod = importlib.import_module(name)
        errors += [obj for _, obj in inspect.getmembers(mod, inspect.isclass)
                   if issubclass(obj, Exception) and not issubclass(obj, Warning)
                   and obj.__module__ == name]
    assert len(errors) >= 12
    assert [e.__name__ for e in errors if not issubclass(e, InputError)] == []
