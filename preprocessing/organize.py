"""Rename a subject's frames to 5-digit numbers in temporal order, after checking the folders agree.

Input ``<data_path>/imgs/`` (frames with any names: ``frame_1.png``, ``img0007.jpg``, ffmpeg's ``00001.png``),
``alpha/``, ``parsing/<stem>_neckhead.png``, ``parsing/<stem>_mouth.png`` and, when present, ``comp/``.
Frames are ordered by natural sort of the ``imgs/`` names (``f2`` before ``f10``) and numbered from
``--start`` (default 0). Every folder must hold exactly the frames of ``imgs/`` (matched by name, not
by position); otherwise nothing is renamed and every difference is listed. The mapping is written to
``<data_path>/organize_map.json`` before renaming, and renames go through temporary names, so
overlapping old and new numbers (``00001`` -> ``00000``) are safe. ``--dry_run`` prints the plan only.

Usage: ``python preprocessing/organize.py --data_path <dir>/.. [--dry_run]``.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from preprocessing.frames_io import FRAME_NAME, PreprocessError, list_images, natural_key
from utils.atomic import write_json

PARSING_KINDS = ("neckhead", "mouth")
MAP_FILE = "organize_map.json"


@dataclass
class OrganizePlan:
    data_path: Path
    order: list[str]  # old stems in temporal order
    mapping: dict[str, str]  # old stem -> new 5-digit stem
    renames: list[tuple[Path, Path]] = field(default_factory=list)  # (src, dst), identity renames left out

    def describe(self, limit: int = 10) -> str:
        lines = [f"{self.data_path}: {len(self.order)} frame(s), {len(self.renames)} file(s) to rename"]
        for src, dst in self.renames[:limit]:
            lines.append(f"  {src.relative_to(self.data_path)} -> {dst.relative_to(self.data_path)}")
        if len(self.renames) > limit:
            lines.append(f"  ... and {len(self.renames) - limit} more")
        return "\n".join(lines)


def _stems(files: list[Path], folder: Path) -> dict[str, Path]:
    out: dict[str, Path] = {}
    dups = []
    for f in files:
        if f.stem in out:
            dups.append(f"{out[f.stem].name} / {f.name}")
        out[f.stem] = f
    if dups:
        raise PreprocessError(
            f"{folder}: several files share a frame name: {', '.join(dups[:5])}; keep one of each"
        )
    return out


def _parsing_files(folder: Path) -> dict[str, dict[str, Path]]:
    """kind -> {frame stem -> file} for ``<stem>_neckhead`` / ``<stem>_mouth`` masks."""
    by_kind: dict[str, dict[str, Path]] = {k: {} for k in PARSING_KINDS}
    odd = []
    for f in list_images(folder, what="parsing folder"):
        stem, _, kind = f.stem.rpartition("_")
        if kind not in by_kind or not stem:
            odd.append(f.name)
            continue
        if stem in by_kind[kind]:
            raise PreprocessError(f"{folder}: two {kind} masks for frame {stem!r}; keep one")
        by_kind[kind][stem] = f
    if odd:
        raise PreprocessError(
            f"{folder}: {len(odd)} mask file(s) not named <frame>_neckhead / <frame>_mouth: "
            f"{', '.join(sorted(odd)[:10])}; rename or remove them"
        )
    return by_kind


def plan_organize(data_path: str | Path, start: int = 0) -> OrganizePlan:
    """Check the folders of ``data_path`` agree and work out every rename; changes nothing."""
    data_path = Path(data_path)
    if not data_path.is_dir():
        raise PreprocessError(
            f"{data_path}: subject folder not found; give the folder holding imgs/, alpha/, parsing/"
        )
    imgs = _stems(list_images(data_path / "imgs", what="frame folder (imgs/)"), data_path / "imgs")
    order = sorted(imgs, key=natural_key)
    groups: dict[str, dict[str, Path]] = {"imgs": imgs}
    alpha_dir = data_path / "alpha"
    groups["alpha"] = _stems(list_images(alpha_dir, what="matte folder (alpha/)"), alpha_dir)
    if (data_path / "comp").is_dir():
        groups["comp"] = _stems(
            list_images(data_path / "comp", what="composite folder (comp/)"), data_path / "comp"
        )
    parsing = _parsing_files(data_path / "parsing")
    for kind in PARSING_KINDS:
        groups[f"parsing/*_{kind}"] = parsing[kind]

    problems = []
    wanted = set(imgs)
    for name, files in groups.items():
        missing = sorted(wanted - set(files), key=natural_key)
        extra = sorted(set(files) - wanted, key=natural_key)
        if missing or extra:
            msg = f"{name}: {len(files)} file(s) for {len(wanted)} frame(s) in imgs/"
            if missing:
                msg += f"; missing {len(missing)}: {', '.join(missing[:8])}" + (
                    " ..." if len(missing) > 8 else ""
                )
            if extra:
                msg += f"; not in imgs/ {len(extra)}: {', '.join(extra[:8])}" + (
                    " ..." if len(extra) > 8 else ""
                )
            problems.append(msg)
    if problems:
        raise PreprocessError(
            f"{data_path}: the folders do not hold the same frames (nothing was renamed):\n  "
            + "\n  ".join(problems)
            + "\nre-run the missing step (rvm.py / semantic.py) or "
            "remove the stray frames"
        )

    mapping = {old: FRAME_NAME.format(start + i) for i, old in enumerate(order)}
    renames = []
    for name, files in groups.items():
        for old, src in files.items():
            new = mapping[old]
            if name.startswith("parsing/"):
                kind = name.rsplit("_", 1)[1]
                dst = src.with_name(f"{new}_{kind}{src.suffix}")
            else:
                dst = src.with_name(f"{new}{src.suffix}")
            if dst != src:
                renames.append((src, dst))
    return OrganizePlan(data_path=data_path, order=order, mapping=mapping, renames=renames)


def apply_plan(plan: OrganizePlan) -> None:
    """Rename in two phases (to unique temporary names, then to the final ones); record the mapping first."""
    if not plan.renames:
        return
    write_json(plan.data_path / MAP_FILE, {"frames": plan.mapping})
    staged = []
    for i, (src, dst) in enumerate(plan.renames):
        tmp = src.with_name(f".organize-{os.getpid()}-{i}{src.suffix}")
        os.replace(src, tmp)
        staged.append((tmp, dst))
    for tmp, dst in staged:
        os.replace(tmp, dst)


def organize(data_path: str | Path, dry_run: bool = False, start: int = 0) -> OrganizePlan:
    """Check and rename a subject folder in place; with ``dry_run`` only the plan is returned."""
    plan = plan_organize(data_path, start=start)
    if not dry_run:
        apply_plan(plan)
    return plan


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument(
        "--data_path", required=True, help="subject folder holding imgs/, alpha/, parsing/ [, comp/]"
    )
    p.add_argument("--start", type=int, default=0, help="number of the first frame")
    p.add_argument("--dry_run", action="store_true", help="print what would be renamed, change nothing")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        plan = organize(args.data_path, dry_run=args.dry_run, start=args.start)
    except PreprocessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(("dry run - " if args.dry_run else "") + plan.describe(limit=20 if args.dry_run else 5))
    return 0


if __name__ == "__main__":
    sys.exit(main())
