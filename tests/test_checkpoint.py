"""Checkpoints: exact round trip / resume, atomic writes, and every bad-checkpoint error."""

from __future__ import annotations

import argparse
import random

import numpy as np
import pytest
import torch

import scene.model.checkpoint as ckpt_mod
from scene.model.avatar import Avatar
from scene.model.checkpoint import CheckpointError, load_checkpoint, read_checkpoint, save_checkpoint
from tests.test_avatar import SMALL, make_tiny_assets, tiny_condition
from utils.options import ModelOptions

ASSETS = make_tiny_assets(0)


def _avatar(**over) -> Avatar:
    cfg = {**SMALL, "ours": True, **over}
    return Avatar(ASSETS, torch.zeros(300), ModelOptions(**cfg))


def _train_steps(avatar: Avatar, opts, steps: int, seed: int) -> None:
    for k in range(steps):
        gs, extras = avatar.deform(tiny_condition(seed + k, torch.float32))
        loss = (gs.means - 0.1).square().mean() + gs.scales.mean() + gs.opacities.mean() \
            + gs.shs.square().mean() + gs.rotations[:, 1].mean()
        if extras.uncertainty is not None:
            loss = loss + 1e-3 * extras.uncertainty.mean()
        for o in opts:
            o.zero_grad()
        loss.backward()
        for o in opts:
            o.step()


@pytest.fixture
def trained(tmp_path):
    torch.manual_seed(0)
    avatar = _avatar()
    with torch.no_grad():
        avatar.gaussians.log_scale.fill_(-3.0)
    opts = avatar.make_optimizers()
    _train_steps(avatar, opts, 3, seed=10)
    avatar.update_sh_degree(1200)
    path = save_checkpoint(tmp_path / "ckpt" / "ckpt3.pth", avatar, opts, 3, extra={"sampler": [1, 2]})
    return avatar, opts, path


def test_round_trip_restores_everything_and_resumes_exactly(trained):
    avatar, opts, path = trained
    assert not [p for p in path.parent.iterdir() if p.name != path.name]  # no temp files left
    torch.manual_seed(123)
    np.random.seed(7)  # noqa: NPY002
    random.seed(5)
    save_checkpoint(path, avatar, opts, 3, extra={"sampler": [1, 2]})  # overwrite: atomic replace
    expected_draws = (torch.rand(4), np.random.rand(3), random.random())  # noqa: NPY002

    fresh = _avatar()
    fresh_opts = fresh.make_optimizers()
    state = load_checkpoint(path, fresh, fresh_opts, restore_rng=True)
    draws = (torch.rand(4), np.random.rand(3), random.random())  # noqa: NPY002
    assert torch.equal(draws[0], expected_draws[0]) and np.array_equal(draws[1], expected_draws[1])
    assert draws[2] == expected_draws[2]
    assert state["iteration"] == 3 and state["extra"] == {"sampler": [1, 2]} and state["method"] == "ours"
    assert fresh.gaussians.active_sh_degree == 2
    for (name, a), (_, b) in zip(avatar.state_dict().items(), fresh.state_dict().items()):
        assert torch.equal(a, b), name
    for o_a, o_b in zip(opts, fresh_opts):
        sa, sb = o_a.state_dict(), o_b.state_dict()
        assert sa["param_groups"] == sb["param_groups"]
        for k in sa["state"]:
            for key in sa["state"][k]:
                assert torch.equal(sa["state"][k][key], sb["state"][k][key])
    # one more step on both gives identical parameters (exact resume)
    _train_steps(avatar, opts, 1, seed=50)
    _train_steps(fresh, fresh_opts, 1, seed=50)
    for (name, a), (_, b) in zip(avatar.state_dict().items(), fresh.state_dict().items()):
        assert torch.equal(a, b), name


def test_checkpoint_of_captured_steps_resumes_on_the_cpu(trained, tmp_path):
    """A GPU run with whole-step CUDA graphs saves its Adam groups as capturable; resumed where the
    parameters are not on CUDA they load as plain groups and step exactly as the original optimiser."""
    avatar, opts, _ = trained
    for o in opts:
        for group in o.param_groups:
            group["capturable"] = True  # as scene.train_step_graph leaves them
    path = save_checkpoint(tmp_path / "ckpt" / "ckpt3.pth", avatar, opts, 3, extra={"sampler": [1, 2]})
    for o in opts:
        for group in o.param_groups:
            group["capturable"] = False
    fresh = _avatar()
    fresh_opts = fresh.make_optimizers()
    load_checkpoint(path, fresh, fresh_opts)
    assert not any(g["capturable"] for o in fresh_opts for g in o.param_groups)
    _train_steps(avatar, opts, 1, seed=50)
    _train_steps(fresh, fresh_opts, 1, seed=50)  # a capturable CPU group would raise here
    for (name, a), (_, b) in zip(avatar.state_dict().items(), fresh.state_dict().items()):
        assert torch.equal(a, b), name


def test_checkpoint_loads_weights_only_and_without_optimizers(trained):
    avatar, _, path = trained
    raw = torch.load(path, weights_only=True)
    assert raw["version"] == ckpt_mod.CHECKPOINT_VERSION and raw["n_gaussians"] == avatar.n_gaussians
    assert raw["config"]["hidden_dim"] == 16 and raw["config"]["ours"] is True
    fresh = _avatar()
    load_checkpoint(path, fresh)
    torch.testing.assert_close(fresh.deform(tiny_condition(1, torch.float32))[0].means,
                               avatar.deform(tiny_condition(1, torch.float32))[0].means)


def test_failed_save_keeps_the_old_file(trained, monkeypatch):
    avatar, opts, path = trained
    before = path.read_bytes()

    def broken_save(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_mod.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, avatar, opts, 4)
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_missing_file_is_named(tmp_path):
    missing = tmp_path / "nope" / "ckpt5000.pth"
    with pytest.raises(FileNotFoundError, match=r"ckpt5000\.pth not found"):
        read_checkpoint(missing)
    with pytest.raises(CheckpointError, match="is a directory"):
        read_checkpoint(tmp_path)


def test_truncated_and_corrupt_files_are_named(trained, tmp_path):
    _, _, path = trained
    data = path.read_bytes()
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"truncated\.pth cannot be read .*truncated or corrupt"):
        read_checkpoint(truncated)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)))
    with pytest.raises(CheckpointError, match=r"garbage\.pth cannot be read"):
        read_checkpoint(garbage)


def test_foreign_and_future_checkpoints_are_refused(tmp_path):
    foreign = tmp_path / "orig.pth"
    torch.save({"network": {}, "iteration": 3}, foreign)
    with pytest.raises(CheckpointError, match="not written by this project"):
        read_checkpoint(foreign)
    pickled = tmp_path / "pickled.pth"
    torch.save({"args": argparse.Namespace(iterations=30000)}, pickled)  # like the original's checkpoints
    with pytest.raises(CheckpointError, match=r"pickled\.pth holds Python objects .* not written by this"):
        read_checkpoint(pickled)
    future = tmp_path / "future.pth"
    torch.save({"format": ckpt_mod.CHECKPOINT_FORMAT, "version": ckpt_mod.CHECKPOINT_VERSION + 1}, future)
    with pytest.raises(CheckpointError, match="format version 2"):
        read_checkpoint(future)
    damaged = tmp_path / "damaged.pth"
    torch.save({"format": ckpt_mod.CHECKPOINT_FORMAT, "version": 1, "method": "ours"}, damaged)
    with pytest.raises(CheckpointError, match="lacks config"):
        read_checkpoint(damaged)


def test_other_method_says_which_flag(trained, tmp_path):
    _, _, ours_path = trained
    with pytest.raises(CheckpointError, match="HyperGaussians .* add --ours"):
        load_checkpoint(ours_path, _avatar(ours=False))
    base = _avatar(ours=False)
    base_path = save_checkpoint(tmp_path / "base.pth", base)
    with pytest.raises(CheckpointError, match="FlashAvatar baseline .* drop --ours"):
        load_checkpoint(base_path, _avatar(ours=True))


def test_other_sizes_name_the_option(trained):
    _, _, path = trained
    with pytest.raises(CheckpointError, match=r"--hidden_dim: checkpoint 16, this run 32"):
        load_checkpoint(path, _avatar(hidden_dim=32))
    with pytest.raises(CheckpointError, match=r"--latent_dim: checkpoint 4, this run 8.*"):
        load_checkpoint(path, _avatar(latent_dim=8))
    with pytest.raises(CheckpointError, match=r"--uv_size: checkpoint 16, this run 20"):
        load_checkpoint(path, _avatar(uv_size=20))


def test_other_gaussian_count_is_explained(trained):
    _, _, path = trained
    other = make_tiny_assets(0)
    other.masks = {"boundary": np.arange(12)}  # same options, a wider neck cut: fewer Gaussians
    avatar = Avatar(other, torch.zeros(300), ModelOptions(**{**SMALL, "ours": True}))
    assert avatar.n_gaussians < trained[0].n_gaussians
    with pytest.raises(CheckpointError, match=r"Gaussians, this avatar .*UV mesh"):
        load_checkpoint(path, avatar)


def test_resume_needs_optimizer_state(tmp_path):
    avatar = _avatar()
    path = save_checkpoint(tmp_path / "no_opt.pth", avatar)
    with pytest.raises(CheckpointError, match="no optimiser state"):
        load_checkpoint(path, _avatar(), _avatar().make_optimizers())
