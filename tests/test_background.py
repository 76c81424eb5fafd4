"""Training over random backgrounds (issue 11's side views): recompositing the ground truth over another
colour, and a short training run whose head no longer depends on the background."""

from __future__ import annotations

import torch

from tests.test_scripts_e2e import SMALL, _roots
from utils.losses import over_background


def test_over_background_equals_compositing_the_raw_frame(synthetic_subject):
    """The white ground truth recomposited over grey-green equals the subject's own two-step composite
    (alpha, then the head mask) of the raw image over that colour."""
    from scene.data.subject import Subject

    data_root, tracking_root, idname = synthetic_subject
    subject = Subject(data_root, tracking_root, idname, test_num=0, eval_num=0)
    frame = subject.frame(1)
    new = torch.tensor([0.2, 0.7, 0.4])
    got = over_background(frame.image, frame.coverage, subject.background, new)
    img_u8, masks_u8 = subject._raw_tensors(1)
    img, masks = img_u8.float() / 255, masks_u8.float() / 255
    subject.background = new
    expected = subject.composite(img, masks[0:1], masks[1:2])
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    assert 0.05 < float(frame.coverage.mean()) < 0.95  # the head covers part of the frame: a real test
    assert float((got - frame.image).abs().max()) > 0.5  # the background did change


def _render_over(trainer, index: int, background: torch.Tensor):
    from gaussian_renderer import render

    frame = trainer.subject.frame(index)
    with torch.no_grad():
        gaussians, _ = trainer.avatar.deform(frame.condition, frame.camera)
        out = render(frame.camera, gaussians, background, backend="torch", return_alpha=True)
    gt = over_background(frame.image, frame.coverage, trainer.subject.background, background)
    return out, gt, frame


def test_random_background_makes_the_head_independent_of_the_background(synthetic_subject, tmp_path):
    """Same start, same frames: trained over white only, the head is partly see-through and its edges
    are tinted with the white it was fitted against, so rendered over black it misses the ground truth
    over black; trained over random colours, it matches there much better, and is more opaque."""
    from scene.trainer import Trainer
    from utils.options import parse_train_args

    common = [*_roots(synthetic_subject), *SMALL, "--lambda_lpips", "0", "--iterations", "150", "--skip_test",
              "--grid_every", "0", "--ckpt_every", "0", "--log_every", "50"]
    black = torch.zeros(3)
    results = {}
    for name, extra in (("white", ["--random_background", "0"]), ("random", ["--random_background", "1"])):
        trainer = Trainer(parse_train_args([*common, "--log_root", str(tmp_path / name), *extra]))
        trainer.run()
        errors, inside = [], []
        for index in trainer.subject.train_indices[:4]:
            out, gt, frame = _render_over(trainer, index, black)
            errors.append(float((out.image - gt).abs().mean()))
            mask = frame.coverage > 0.99
            inside.append(float(out.alpha[mask].mean()))
        results[name] = (sum(errors) / len(errors), sum(inside) / len(inside))
        trainer.close()
    (white_err, white_alpha), (random_err, random_alpha) = results["white"], results["random"]
    assert random_err < 0.8 * white_err, results
    assert random_alpha > white_alpha, results
