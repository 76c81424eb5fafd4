"""Whole-frame and whole-step CUDA graphs (scene/frame_graph.py, scene/train_step_graph.py) against the
launch-by-launch paths they replace: the same images exactly, the same training up to float noise, and
new captures where what a capture fixes changes (SH degree, pair count)."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch

from gaussian_renderer import render
from scene import frame_graph
from scene.frame_graph import FrameRenderGraph
from scene.trainer import Trainer
from utils.options import parse_train_args

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def _trainer(subject, log_root, *extra: str) -> Trainer:
    data_root, tracking_root, idname = subject
    argv = ["--idname", idname, "--data_root", str(data_root), "--tracking_root", str(tracking_root),
            "--log_root", str(log_root), "--device", "cuda", "--backend", "cuda", "--hidden_dim", "64",
            "--hidden_layers", "3", "--uv_size", "32", "--test_num", "4", "--lambda_lpips", "0",
            "--skip_test", "--seed", "3", *extra]
    return Trainer(parse_train_args(argv))


def _closer(camera, factor: float):
    """The camera moved towards the head: its translation scaled by ``factor`` (< 1: more pixels)."""
    return camera.with_pose(camera.R, camera.t * factor)


def _pairs(cam, gaussians, background) -> int:
    """The (tile, Gaussian) pairs a frame needs, from an eager fixed-capacity call."""
    count = torch.zeros(1, dtype=torch.int32, device="cuda")
    render(cam, gaussians, background, backend="cuda", pair_capacity=1, pair_count=count)
    return int(count)


@contextmanager
def _tight_frame_graph(subject, log_root, monkeypatch, ours: bool):
    """(avatar, subject, background, FrameRenderGraph) of a prepared run with every parameter perturbed (a
    non-trivial state), SH degree 3 (the view-dependent colour on), in eval mode; captures with no headroom
    (capacity = the measured frame's pairs), so that a frame needing more pairs is captured anew."""
    monkeypatch.setattr(frame_graph, "GROWTH", 1.0)
    monkeypatch.setattr(frame_graph, "MIN_CAPACITY", 1)
    trainer = _trainer(subject, log_root, *(["--ours"] if ours else []))
    try:
        trainer.prepare()
        avatar = trainer.avatar
        avatar.update_sh_degree(1500)
        with torch.no_grad():
            gen = torch.Generator(device="cuda").manual_seed(0)
            for p in avatar.parameters():
                p.add_(0.02 * torch.randn(p.shape, device="cuda", generator=gen))
        avatar.eval()
        bg = trainer.background
        yield avatar, trainer.subject, bg, FrameRenderGraph(avatar, bg, "cuda")
    finally:
        trainer.close()


@pytest.mark.parametrize("ours", [False, True])
def test_frame_graph_renders_exactly_what_the_eager_path_renders(synthetic_subject, tmp_path, monkeypatch,
                                                                 ours):
    """Deformation + rasterizer as one replay: bit-equal images on several frames, a turned camera and a
    nearer one. With no headroom (capacity = the first frame's pairs), every frame that needs more pairs
    than the capture has room for is captured anew (and is still exact), and only those."""
    with _tight_frame_graph(synthetic_subject, tmp_path, monkeypatch, ours) as (avatar, subject, bg, graph):
        views = [(i, subject.frame(i).camera) for i in subject.train_indices[:4]]
        first_i, first_cam = views[0]
        views += [(first_i, first_cam.turned(25.0, -10.0)), (first_i, _closer(first_cam, 0.7))]
        capacity, captures = 0, 0
        with torch.no_grad():
            for i, cam in views:
                cond = subject.frame(i).condition
                gaussians = avatar.frame_gaussians(cond, cam)  # what the graph runs (fast path frame_kernel)
                want = render(cam, gaussians, bg, backend="cuda").image
                needed = _pairs(cam, gaussians, bg)
                if needed > capacity:  # the first frame, and any that needs more room than the last capture
                    capacity, captures = needed, captures + 1
                got = graph(cond, cam).image
                assert torch.equal(got, want), i
                assert graph.captures == captures and graph.budget.capacity == capacity
        assert captures >= 2  # the nearer camera needs more pairs than the frames before it


@pytest.mark.parametrize("ours", [False, True])
def test_frame_graph_stream_hands_out_exact_frames_in_order(synthetic_subject, tmp_path, monkeypatch, ours):
    """stream(): each frame's pair count is read one frame behind; the images are bit-equal to the eager
    render, in order, with their tags, also where a frame (the nearer camera) needs more pairs than the
    capture has room for and the frame queued behind it was made with the same capture; an SH degree change
    mid-stream (a new capture while a frame is in flight) hands out the frame before it first."""
    with _tight_frame_graph(synthetic_subject, tmp_path, monkeypatch, ours) as (avatar, subject, bg, graph):
        first = subject.frame(subject.train_indices[0])
        views = [(i, subject.frame(i).camera) for i in subject.train_indices[:3]]
        views += [(views[0][0], _closer(first.camera, 0.7)), (views[1][0], views[1][1]),
                  (views[0][0], _closer(first.camera, 0.6)), (views[2][0], views[2][1].turned(20.0, 5.0))]
        with torch.no_grad():
            want = [render(cam, avatar.frame_gaussians(subject.frame(i).condition, cam), bg,
                           backend="cuda").image.clone() for i, cam in views]
            items = ((k, subject.frame(i).condition, cam) for k, (i, cam) in enumerate(views))
            got = [(k, out.image.clone()) for k, out in graph.stream(items)]
            assert [k for k, _ in got] == list(range(len(views)))
            for k, img in got:
                assert torch.equal(img, want[k]), k
            assert graph.captures >= 2  # the nearer cameras needed captures with more room
            # the SH degree changes between the second and third frame: a new capture mid-stream
            captures = graph.captures

            def degree_switching():
                for k, (i, cam) in enumerate(views[:4]):
                    if k == 2:
                        avatar.update_sh_degree(500)
                    yield k, subject.frame(i).condition, cam

            got = [(k, out.image.clone()) for k, out in graph.stream(degree_switching())]
            for k, img in got:
                i, cam = views[k]
                avatar.update_sh_degree(1500 if k < 2 else 500)
                ref = render(cam, avatar.frame_gaussians(subject.frame(i).condition, cam), bg, backend="cuda")
                assert torch.equal(img, ref.image), k
            assert graph.captures > captures and graph.key[-1] == 1

            # a new graph: the frame in flight at the degree change needs more pairs than its capture holds,
            # so it is captured again -- at its own degree 3 though the avatar has moved on to degree 1
            avatar.update_sh_degree(1500)
            fresh = FrameRenderGraph(avatar, bg, "cuda")
            near = _closer(first.camera, 0.6)
            cond0 = subject.frame(views[0][0]).condition
            assert _pairs(near, avatar.frame_gaussians(cond0, near), bg) > \
                _pairs(views[0][1], avatar.frame_gaussians(cond0, views[0][1]), bg)
            order = [(views[0][0], views[0][1]), (views[0][0], near), (views[1][0], views[1][1])]
            want = []
            for k, (i, cam) in enumerate(order):
                avatar.update_sh_degree(1500 if k < 2 else 500)
                want.append(render(cam, avatar.frame_gaussians(subject.frame(i).condition, cam), bg,
                                   backend="cuda").image.clone())
            avatar.update_sh_degree(1500)

            def switching_after_the_near_frame():
                for k, (i, cam) in enumerate(order):
                    if k == 2:
                        avatar.update_sh_degree(500)
                    yield k, subject.frame(i).condition, cam

            got = [(k, out.image.clone()) for k, out in fresh.stream(switching_after_the_near_frame())]
            assert [k for k, _ in got] == [0, 1, 2]
            for k, img in got:
                assert torch.equal(img, want[k]), k
            assert fresh.captures == 3 and fresh.key[-1] == 1  # first frame, room for the near one, degree 1
            assert avatar.gaussians.active_sh_degree == 1


def test_frame_graph_goes_eager_when_what_it_fixes_keeps_changing(synthetic_subject, tmp_path, monkeypatch):
    """Each new SH degree (or camera size / field of view) is a capture; past MAX_KEYS changes the frames
    are rendered without a graph (with a warning), still equal to the eager render."""
    monkeypatch.setattr(frame_graph, "MAX_KEYS", 2)
    trainer = _trainer(synthetic_subject, tmp_path)
    try:
        trainer.prepare()
        avatar, subject, bg = trainer.avatar, trainer.subject, trainer.background
        graph = FrameRenderGraph(avatar, bg, "cuda")
        frame = subject.frame(subject.train_indices[0])
        with torch.no_grad():
            for k, degree_at in enumerate((0, 500, 1000)):
                avatar.update_sh_degree(degree_at)
                want = render(frame.camera, avatar.frame_gaussians(frame.condition, frame.camera), bg,
                              backend="cuda").image
                if k < 2:
                    got = graph(frame.condition, frame.camera).image
                    assert graph.captures == k + 1 and not graph.eager
                else:
                    with pytest.warns(UserWarning, match="without a CUDA graph"):
                        got = graph(frame.condition, frame.camera).image
                    assert graph.eager and graph.captures == 2
                assert torch.equal(got, want), degree_at
    finally:
        trainer.close()


def _losses(trainer: Trainer, frames: list[int], sh_switch: int, by_index: bool = False) -> list[float]:
    """The losses of steps on ``frames``; ``by_index``: as train.py's loop, a replay that picks the frame
    on the device where the capture allows (TrainStepGraph.replay_index), else the frame's step."""
    trainer.prepare()
    out = []
    for k, i in enumerate(frames, start=1):
        trainer.avatar.update_sh_degree(0 if k < sh_switch else 500)
        got = trainer.step_graph.replay_index(k, i) if by_index else None
        terms, _ = got if got is not None else trainer.step(k, trainer.subject.frame(i))
        out.append(float(terms.total.detach()))
    return out


@pytest.mark.parametrize("ours", [False, True])
def test_whole_step_graph_trains_as_the_eager_loop(synthetic_subject, tmp_path, ours):
    """The captured iteration (loss, backward, both Adam steps) gives the eager loop's losses and
    parameters up to float noise (the rasterizer's backward sums with atomics); a new SH degree is a new
    capture after two eager warm-up steps. The frames are cached on the device, so the capture picks its
    frame by index, and train.py's replays by index alone give the same losses."""
    method = ["--ours"] if ours else []
    runs = {}
    for name, scope in (("step", ["--graph_scope", "step"]), ("index", ["--graph_scope", "step"]),
                        ("eager", ["--no_cuda_graphs"])):
        trainer = _trainer(synthetic_subject, tmp_path / name, *method, *scope)  # seeds torch's RNGs
        frames = [trainer.subject.train_indices[k % len(trainer.subject.train_indices)] for k in range(40)]
        runs[name] = (trainer, _losses(trainer, frames, sh_switch=20, by_index=name == "index"))
    (whole, got), (eager, want), (indexed, by_index) = runs["step"], runs["eager"], runs["index"]
    try:
        assert whole.step_graph.gathers and indexed.step_graph.gathers
        assert indexed.step_graph.captures == 2
        for k, (a, b) in enumerate(zip(by_index, want), start=1):
            assert abs(a - b) <= 2e-3 * b + 1e-6, (k, a, b)
        graph = whole.step_graph
        assert graph is not None and graph.disabled is None and eager.step_graph is None
        assert graph.captures == 2  # SH degree 0, then 1; steps 1-2 and 20-21 ran eagerly
        assert graph.check_pairs() == 0  # every replay had room for its pairs
        for k, (a, b) in enumerate(zip(got, want), start=1):
            assert abs(a - b) <= 2e-3 * b + 1e-6, (k, a, b)
        assert sum(got[-5:]) < sum(got[:5])  # it learns
        for (name, p), q in zip(whole.avatar.named_parameters(), eager.avatar.parameters()):
            scale = q.detach().abs().max().clamp_min(1e-6)
            assert (p.detach() - q.detach()).abs().max() <= 2e-2 * scale, name
    finally:
        whole.close()
        eager.close()
        indexed.close()
