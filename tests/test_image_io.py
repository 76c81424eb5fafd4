"""utils/image_io: the threaded PNG writer that render.py uses."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from utils.image_io import ImageWriter, read_image_uint8, write_image


def test_image_writer_matches_write_image_and_reports_failures(tmp_path):
    """The threaded writer gives the same bytes as write_image, snapshots its input at submit time, and
    raises a failed write (naming the file) when it closes."""
    rng = np.random.default_rng(0)
    frames = [torch.from_numpy(rng.random((3, 20, 24)).astype(np.float32)) for _ in range(9)]
    buf = np.zeros((20, 24, 3), dtype=np.uint8)
    with ImageWriter(workers=3, max_pending=2) as w:
        for k, f in enumerate(frames):
            w.submit(tmp_path / "a" / f"{k}.png", f)
        buf[:] = 7
        w.submit(tmp_path / "a" / "buf.png", buf)
        buf[:] = 200  # changed after submit: the file must still hold 7
    for k, f in enumerate(frames):
        write_image(tmp_path / "b" / f"{k}.png", f)
        assert (tmp_path / "a" / f"{k}.png").read_bytes() == (tmp_path / "b" / f"{k}.png").read_bytes()
    assert (read_image_uint8(tmp_path / "a" / "buf.png") == 7).all()

    blocker = tmp_path / "not_a_dir"
    blocker.write_text("x")
    with pytest.raises(OSError) as err:
        with ImageWriter(workers=2) as w:
            w.submit(tmp_path / "c" / "0.png", frames[0])
            w.submit(blocker / "1.png", frames[1])
    assert "not_a_dir" in str(err.value)
    assert (tmp_path / "c" / "0.png").is_file()
