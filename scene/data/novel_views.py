"""The novel-view split of a subject: the same expressions seen from turned views, with ground truth.

Only subjects that have such views (the synthetic generator's ``--novel_views``) hold one:
``<data_root>/<id>/novel_views/novel_views.json`` ({"frames": [frame numbers], "views": {name: {"yaw_deg",
"pitch_deg"}}}) and per view ``<name>/imgs/NNNNN.png``, ``alpha/`` and ``parsing/NNNNN_neckhead.png``,
NNNNN the tracked frame it turns. The view's camera is the frame's turned by (yaw, pitch)
(:meth:`scene.data.cameras.Camera.turned`); real subjects simply have none.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from scene.data.subject import SubjectDataError
from utils.image_io import find_image, read_image_uint8, read_mask_uint8

NOVEL_DIR = "novel_views"
NOVEL_INDEX = "novel_views.json"


@dataclass(frozen=True)
class NovelView:
    name: str
    yaw_deg: float
    pitch_deg: float


@dataclass
class NovelViews:
    """The split's views and the frame numbers each view has."""

    root: Path
    frames: list[int]
    views: list[NovelView]

    def ground_truth(self, view: NovelView, frame_id: int) -> tuple[Tensor, Tensor, Tensor]:
        """uint8 image (3,H,W), alpha (1,H,W) and head mask (1,H,W) of ``view`` of frame ``frame_id``."""
        folder, name = self.root / view.name, f"{frame_id:05d}"
        img_p, alpha_p = find_image(folder / "imgs", name), find_image(folder / "alpha", name)
        head_p = folder / "parsing" / f"{name}_neckhead.png"
        expected = {"imgs": img_p, "alpha": alpha_p, "parsing": head_p if head_p.is_file() else None}
        missing = [f"{folder / sub}/{name}*" for sub, p in expected.items() if p is None]
        if missing:
            raise SubjectDataError(f"novel view '{view.name}' of frame {frame_id}: missing {missing}; "
                                   "regenerate the split (python -m preprocessing.synthetic_subject "
                                   "--novel_views N)")
        img = torch.from_numpy(read_image_uint8(img_p)).permute(2, 0, 1)
        alpha = torch.from_numpy(read_mask_uint8(alpha_p))[None]
        head = torch.from_numpy(read_mask_uint8(head_p))[None]
        return img, alpha, head


def load_novel_views(subject_dir: Path) -> NovelViews | None:
    """The subject's novel-view split, or None when it has none."""
    root = Path(subject_dir) / NOVEL_DIR
    index = root / NOVEL_INDEX
    if not index.is_file():
        return None
    try:
        spec = json.loads(index.read_text())
        frames = [int(n) for n in spec["frames"]]
        views = [NovelView(str(k), float(v["yaw_deg"]), float(v["pitch_deg"]))
                 for k, v in spec["views"].items()]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise SubjectDataError(f"{index} cannot be read ({type(exc).__name__}: {exc}); regenerate the "
                               "novel-view split") from exc
    return NovelViews(root, frames, views)
