"""utils.training.RunLogger's images: encoded on a background thread, the same PNG bytes as write_image,
all written by close(), a failed write raised there (naming the file), the JSON log kept."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from utils.image_io import read_image, write_image
from utils.training import RunLogger


def test_images_are_written_in_the_background_and_waited_for_at_close(tmp_path):
    logger = RunLogger(tmp_path / "run", {"opt": 1})
    gen = torch.Generator().manual_seed(0)
    grids = [torch.rand(3, 20, 36, generator=gen) for _ in range(5)]
    paths = [tmp_path / "run" / "train" / f"{k:05d}.png" for k in range(5)]
    for k, (grid, path) in enumerate(zip(grids, paths)):
        logger.image(k, "train/grid", grid, path)
        grid.fill_(0.5)  # the logger took its own 8-bit copy at the call
    logger.loss(4, {"total": 0.25})
    logger.close()
    gen = torch.Generator().manual_seed(0)
    for path in paths:
        want = torch.rand(3, 20, 36, generator=gen)
        reference = write_image(tmp_path / "ref.png", want)
        assert path.read_bytes() == reference.read_bytes()
        assert np.array_equal(read_image(path), read_image(reference))
    assert json.loads((tmp_path / "run" / "train_log.json").read_text())["losses"][-1]["total"] == 0.25
    if logger.tb is not None:  # tensorboard got the images too
        assert list((tmp_path / "run").glob("events.out.tfevents.*"))


def test_a_failed_image_write_is_raised_at_close_naming_the_file(tmp_path):
    logger = RunLogger(tmp_path / "run", {})
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    logger.image(0, "train/grid", torch.zeros(3, 4, 4), blocker / "00000.png")
    with pytest.raises(OSError, match="file"):
        logger.close()
    assert (tmp_path / "run" / "train_log.json").is_file()  # the log is still flushed


def test_tensorboard_gets_the_scalars_in_order_from_its_own_thread(tmp_path):
    """The losses and evaluations reach tensorboard's event file (written on the logger's tensorboard
    thread, in call order), all of them by close()."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = RunLogger(tmp_path / "run", {})
    for step in range(1, 6):
        logger.loss(step * 25, {"loss": 1.0 / step, "lpips": None})
    logger.evaluation(125, {"PSNR": 30.5, "num_views": 4})
    logger.close()
    events = EventAccumulator(str(tmp_path / "run"))
    events.Reload()
    assert [(e.step, round(e.value, 6)) for e in events.Scalars("train/loss")] == \
        [(25 * k, round(1.0 / k, 6)) for k in range(1, 6)]
    assert [e.value for e in events.Scalars("eval/PSNR")] == [30.5]
    assert "train/lpips" not in events.Tags()["scalars"] and "eval/num_views" not in events.Tags()["scalars"]
