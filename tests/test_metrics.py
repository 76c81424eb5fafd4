"""PSNR / SSIM against independent numpy computations and hand values; the LPIPS loader offline (error
message without weights, a working metric with a project-made random VGG16 checkpoint, checked against a
hand-written LPIPS); metrics.py on a written frames folder."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from utils import fast_paths
from utils.image_io import read_image, read_mask, write_image
from utils.image_metrics import gaussian_window, masked, psnr, ssim, ssim_map


# ---------------------------------------------------------------- PSNR
def test_psnr_hand_values():
    a = torch.zeros(3, 8, 8)
    b = torch.full((3, 8, 8), 0.1)
    assert psnr(a, b).item() == pytest.approx(20.0, abs=1e-4)  # mse 0.01
    mask = torch.zeros(8, 8)
    mask[:, :4] = 1  # half the pixels count; the rest is zero error
    expected = 10 * math.log10(1 / 0.005)
    assert psnr(masked(a, mask), masked(b, mask)).item() == pytest.approx(expected, abs=1e-4)
    batch = psnr(torch.stack([a, a]), torch.stack([b, masked(b, mask)]))
    assert batch.shape == (2,)
    assert batch[1].item() == pytest.approx(23.0103, abs=1e-3)
    assert math.isinf(psnr(a, a).item())


# ---------------------------------------------------------------- SSIM, independent numpy version
def _np_gaussian_window(size=11, sigma=1.5):
    g = np.array([math.exp(-((x - size // 2) ** 2) / (2 * sigma ** 2)) for x in range(size)])
    g /= g.sum()
    return np.outer(g, g)


def _np_filter(x, w):
    """Zero-padded 'same' correlation by summing shifted copies (no conv library)."""
    k = w.shape[0]
    r = k // 2
    xp = np.pad(x, ((r, r), (r, r)))
    out = np.zeros_like(x)
    for dy in range(k):
        for dx in range(k):
            out += w[dy, dx] * xp[dy:dy + x.shape[0], dx:dx + x.shape[1]]
    return out


def _np_ssim(a, b):
    w = _np_gaussian_window()
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    vals = []
    for ch in range(a.shape[0]):
        x, y = a[ch], b[ch]
        mx, my = _np_filter(x, w), _np_filter(y, w)
        sxx = _np_filter(x * x, w) - mx ** 2
        syy = _np_filter(y * y, w) - my ** 2
        sxy = _np_filter(x * y, w) - mx * my
        vals.append(((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (sxx + syy + c2)))
    return float(np.mean(vals))


def test_gaussian_window():
    w = gaussian_window().numpy()
    assert w.shape == (11, 11)
    assert w.sum() == pytest.approx(1.0, abs=1e-12)
    assert np.allclose(w, _np_gaussian_window(), atol=1e-15)


def test_ssim_matches_numpy_reference():
    rng = np.random.default_rng(0)
    a = rng.random((3, 24, 30))
    b = np.clip(a + 0.1 * rng.standard_normal(a.shape), 0, 1)
    ref = _np_ssim(a, b)
    got = ssim(torch.from_numpy(a), torch.from_numpy(b)).item()
    assert got == pytest.approx(ref, abs=1e-10)
    got32 = ssim(torch.from_numpy(a).float(), torch.from_numpy(b).float()).item()
    assert got32 == pytest.approx(ref, abs=1e-5)
    assert 0.2 < ref < 0.99


def test_ssim_hand_values():
    x = torch.rand(3, 20, 20, dtype=torch.float64)
    assert ssim(x, x).item() == pytest.approx(1.0, abs=1e-12)
    # constant images a, b: interior pixels (window fully inside) have sigma = 0, so
    # SSIM = (2ab + C1) / (a^2 + b^2 + C1)
    a, b = 0.3, 0.6
    f64 = torch.float64
    m = ssim_map(torch.full((3, 20, 20), a, dtype=f64), torch.full((3, 20, 20), b, dtype=f64))
    expected = (2 * a * b + 1e-4) / (a * a + b * b + 1e-4)
    assert torch.allclose(m[0, :, 5:15, 5:15], torch.full((3, 10, 10), expected, dtype=f64), atol=1e-12)
    # near the border the zero padding darkens both means, so values differ from the interior
    assert not torch.allclose(m[0, :, 0, 0], torch.full((3,), expected, dtype=f64), atol=1e-6)


def test_ssim_batched_equals_single():
    x = torch.rand(2, 3, 16, 16, dtype=torch.float64)
    y = torch.rand(2, 3, 16, 16, dtype=torch.float64)
    batch = ssim(x, y)
    assert torch.allclose(batch, torch.stack([ssim(x[0], y[0]), ssim(x[1], y[1])]))


# ---------------------------------------------------------------- LPIPS loader
@pytest.fixture(scope="module")
def vgg_torch_home(tmp_path_factory) -> Path:
    """A TORCH_HOME whose hub cache holds a randomly initialised, project-made VGG16 checkpoint
    (features only: the loader reads nothing else)."""
    import torchvision

    home = tmp_path_factory.mktemp("torch_home")
    torch.manual_seed(0)
    feats = torchvision.models.vgg16(weights=None).features
    state = {f"features.{k}": v for k, v in feats.state_dict().items()}
    (home / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(state, home / "hub" / "checkpoints" / "vgg16-397923af.pth")
    return home


def test_lpips_missing_weights_message(tmp_path, monkeypatch):
    from utils.lpips_loader import LPIPSUnavailableError, load_lpips_vgg, try_load_lpips_vgg

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(LPIPSUnavailableError) as exc:
        load_lpips_vgg()
    msg = str(exc.value)
    assert str(tmp_path / "hub" / "checkpoints" / "vgg16-397923af.pth") in msg
    assert "--lambda_lpips 0" in msg
    assert "https://download.pytorch.org/models/vgg16-397923af.pth" in msg
    model, reason = try_load_lpips_vgg()
    assert model is None and "vgg16-397923af.pth" in reason and "null" in reason


def test_lpips_truncated_weights_message(tmp_path, monkeypatch):
    from utils.lpips_loader import LPIPSUnavailableError, load_lpips_vgg

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    target = tmp_path / "hub" / "checkpoints" / "vgg16-397923af.pth"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"PK\x03\x04 not really a checkpoint")
    with pytest.raises(LPIPSUnavailableError, match="truncated"):
        load_lpips_vgg()


def _reference_lpips(state: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """LPIPS v0.1 written out: scaling layer, VGG16 relu1_2..relu5_3 features, channel-normalised
    squared differences weighted by the package's linear layers, spatial means, summed."""
    import lpips

    lin = torch.load(Path(lpips.__file__).parent / "weights" / "v0.1" / "vgg.pth", map_location="cpu")
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
    convs = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
    taps = {2: 0, 7: 1, 14: 2, 21: 3, 28: 4}  # relu after these convs are LPIPS layers
    pools_after = {2, 7, 14, 21}

    def features(img):
        h = ((img * 2 - 1) - shift) / scale
        outs = []
        for c in convs:
            h = F.relu(F.conv2d(h, state[f"features.{c}.weight"], state[f"features.{c}.bias"], padding=1))
            if c in taps:
                outs.append(h)
            if c in pools_after:
                h = F.max_pool2d(h, 2, 2)
        return outs

    total = 0
    for k, (f0, f1) in enumerate(zip(features(x), features(y))):
        n0 = f0 / (f0.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        n1 = f1 / (f1.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        w = lin[f"lin{k}.model.1.weight"]
        total = total + (F.conv2d((n0 - n1) ** 2, w)).mean((2, 3))
    return total.flatten()


def test_lpips_works_with_weights_in_torch_home(vgg_torch_home, monkeypatch):
    from utils.lpips_loader import load_lpips_vgg

    monkeypatch.setenv("TORCH_HOME", str(vgg_torch_home))
    model = load_lpips_vgg("cpu")
    torch.manual_seed(1)
    x, y = torch.rand(2, 3, 48, 48), torch.rand(2, 3, 48, 48)
    got = model(x, y)
    state = torch.load(vgg_torch_home / "hub" / "checkpoints" / "vgg16-397923af.pth")
    ref = _reference_lpips(state, x, y)
    assert got.shape == (2,)
    assert torch.allclose(got, ref, rtol=1e-4, atol=1e-6)
    assert got.min() > 0
    assert model(x[0], x[0]).abs().item() < 1e-6
    # differentiable w.r.t. the images (the training loss needs that), frozen weights
    xr = x.clone().requires_grad_(True)
    model(xr, y).sum().backward()
    assert xr.grad is not None and xr.grad.abs().sum() > 0
    assert all(not p.requires_grad for p in model.parameters())


# ---------------------------------------------------------------- metrics.py
def _write_frames(root: Path, n: int = 3, size: int = 24) -> None:
    rng = np.random.default_rng(3)
    for i in range(n):
        gt = rng.random((size, size, 3))
        render = np.clip(gt + 0.05 * rng.standard_normal(gt.shape), 0, 1)
        mask = np.zeros((size, size))
        mask[4:20, 3:21] = 1.0
        write_image(root / "renders" / f"{i:05d}.png", render)
        write_image(root / "gt" / f"{i:05d}.png", gt)
        write_image(root / "mask" / f"{i:05d}.png", mask)


def _expected(root: Path, name: str) -> tuple[float, float]:
    r = np.transpose(read_image(root / "renders" / name), (2, 0, 1)).astype(np.float64)
    g = np.transpose(read_image(root / "gt" / name), (2, 0, 1)).astype(np.float64)
    m = read_mask(root / "mask" / name).astype(np.float64)
    r, g = r * m, g * m
    mse = np.mean((r - g) ** 2)
    return 20 * math.log10(1 / math.sqrt(mse)), _np_ssim(r, g)


def test_metrics_script_without_lpips_weights(tmp_path, monkeypatch):
    import metrics

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_home"))
    run = tmp_path / "logs" / "subj_baseline"
    _write_frames(run / "frames")
    assert metrics.main(["-m", str(run), "--device", "cpu"]) == 0
    res = json.loads((run / "results.json").read_text())
    per = json.loads((run / "per_view.json").read_text())
    assert res["LPIPS"] is None and res["LPIPS_x0.05_original_scale"] is None
    assert "vgg16-397923af.pth" in res["LPIPS_unavailable_reason"]
    names = sorted(per["PSNR"])
    assert names == ["00000.png", "00001.png", "00002.png"]
    for name in names:
        p, s = _expected(run / "frames", name)
        assert per["PSNR"][name] == pytest.approx(p, abs=1e-4)
        assert per["SSIM"][name] == pytest.approx(s, abs=1e-5)
        assert per["LPIPS"][name] is None
    assert res["PSNR"] == pytest.approx(np.mean([per["PSNR"][n] for n in names]), abs=1e-9)
    assert res["num_views"] == 3


def test_metrics_script_with_lpips_on_frames_dir(tmp_path, vgg_torch_home, monkeypatch):
    import metrics

    monkeypatch.setenv("TORCH_HOME", str(vgg_torch_home))
    frames = tmp_path / "frames_rotate"  # a frames folder given directly
    _write_frames(frames, n=2)
    assert metrics.main(["-m", str(frames), "--device", "cpu"]) == 0
    res = json.loads((frames / "results.json").read_text())
    assert res["LPIPS"] is not None and math.isfinite(res["LPIPS"]) and res["LPIPS"] > 0
    assert res["LPIPS_x0.05_original_scale"] == pytest.approx(0.05 * res["LPIPS"], rel=1e-9)
    assert "LPIPS_unavailable_reason" not in res


def test_metrics_script_bad_inputs(tmp_path, capsys, monkeypatch):
    import metrics

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_home"))
    assert metrics.main(["-m", str(tmp_path / "nope"), "--no_lpips"]) == 2
    assert "not a folder" in capsys.readouterr().err
    empty = tmp_path / "run"
    empty.mkdir()
    assert metrics.main(["-m", str(empty), "--no_lpips"]) == 2
    assert "run render.py" in capsys.readouterr().err
    _write_frames(empty / "frames", n=2)
    os.remove(empty / "frames" / "gt" / "00001.png")
    assert metrics.main(["-m", str(empty), "--no_lpips"]) == 2
    assert "missing" in capsys.readouterr().err


def test_prefetched_keeps_order_and_bounds_read_ahead():
    """metrics.py decodes PNGs ahead on threads: results in order, at most ``window`` held at a time."""
    import threading

    from utils.prefetch import prefetched

    started, lock = [], threading.Lock()

    def work(k: int) -> int:
        with lock:
            started.append(k)
        return k * k

    out = []
    for k, value in enumerate(prefetched(work, list(range(50)), workers=4, window=5)):
        out.append(value)
        with lock:
            assert len(started) <= k + 5  # never more than the window ahead of the consumer
    assert out == [k * k for k in range(50)]


def test_vgg16_download_attempt(tmp_path, monkeypatch):
    """Issue 12: a missing VGG16 file is fetched as torchvision would (atomically); a failed or disabled
    download leaves the clear error, naming the file and why."""
    import urllib.error

    import torch

    from utils import lpips_loader

    target = tmp_path / "hub" / "checkpoints" / lpips_loader.VGG16_FILENAME
    calls = []

    def fake_ok(url, dst, progress=True):
        calls.append(url)
        Path(dst).write_bytes(b"weights")

    monkeypatch.delenv("GAUSSIAN_NO_DOWNLOAD", raising=False)
    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_ok)
    assert lpips_loader.download_vgg16(target) is None
    assert target.read_bytes() == b"weights" and calls == [lpips_loader.VGG16_URL]
    assert not [p for p in target.parent.iterdir() if p.name != target.name]  # no temp file left

    def fake_fail(url, dst, progress=True):
        Path(dst).write_bytes(b"half")
        raise urllib.error.URLError("Name or service not known")

    other = tmp_path / "other" / lpips_loader.VGG16_FILENAME
    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_fail)
    reason = lpips_loader.download_vgg16(other)
    assert "download failed" in reason and "Name or service not known" in reason
    assert not other.exists() and not list(other.parent.iterdir())  # nothing half-written
    monkeypatch.setenv("GAUSSIAN_NO_DOWNLOAD", "1")
    assert "GAUSSIAN_NO_DOWNLOAD" in lpips_loader.download_vgg16(tmp_path / "x" / "v.pth")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_home"))
    with pytest.raises(lpips_loader.LPIPSUnavailableError, match="vgg16-397923af.pth does not exist"):
        lpips_loader.load_lpips_vgg("cpu")


def test_lpips_forward_matches_the_package_with_its_gradient(vgg_torch_home, monkeypatch):
    """Our LPIPS (utils.lpips_net's modules, built without importing lpips; split trunk, float32 heads)
    has the lpips package's own model's state dict keys and shapes, and with its state loaded into the
    package's model gives the package's value and gradient; the gradient-free path (both images in one
    trunk batch) gives the same value."""
    import lpips

    from utils.lpips_loader import load_lpips_vgg

    monkeypatch.setenv("TORCH_HOME", str(vgg_torch_home))
    model = load_lpips_vgg("cpu")
    reference = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False).eval()
    ours_state, theirs = model.net.state_dict(), reference.state_dict()
    assert {k: v.shape for k, v in ours_state.items()} == {k: v.shape for k, v in theirs.items()}
    for k in theirs:  # the calibrated heads (and the scaling constants): as the package loads them
        if not k.startswith("net."):
            assert torch.equal(ours_state[k], theirs[k]), k
    reference.load_state_dict(ours_state)  # the trunk: the checkpoint in vgg_torch_home
    torch.manual_seed(3)
    x, y = torch.rand(2, 3, 40, 40, dtype=torch.float64), torch.rand(2, 3, 40, 40, dtype=torch.float64)
    model, reference = model.double(), reference.double()
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ours = model(xa, y)
    ours.sum().backward()
    package = reference(xb * 2 - 1, y * 2 - 1).flatten()  # lpips.LPIPS.forward on [-1, 1] input
    package.sum().backward()
    assert torch.allclose(ours, package, rtol=1e-10, atol=1e-12)
    assert torch.allclose(xa.grad, xb.grad, rtol=1e-8, atol=1e-12)
    with torch.no_grad():
        assert torch.allclose(model(x, y), package.detach(), rtol=1e-10, atol=1e-12)
    # the gradient also matches finite differences in one pixel
    eps = 1e-6
    xp, xm = x.clone(), x.clone()
    xp[0, 1, 20, 20] += eps
    xm[0, 1, 20, 20] -= eps
    with torch.no_grad():
        fd = (model(xp, y).sum() - model(xm, y).sum()) / (2 * eps)
    assert torch.allclose(xa.grad[0, 1, 20, 20], fd, rtol=1e-5, atol=1e-9)


def test_lpips_loads_without_torchvision_or_the_compiler(vgg_torch_home):
    """Building LPIPS-VGG imports neither the lpips package nor torchvision (which imports torch._dynamo:
    seconds of every train.py start-up), and the model computes a distance."""
    import subprocess
    import sys

    code = ("import sys, torch\n"
            "from utils.lpips_loader import load_lpips_vgg\n"
            "m = load_lpips_vgg('cpu')\n"
            "d = m(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32))\n"
            "names = ('lpips', 'torchvision', 'torch._dynamo')\n"
            "print(bool(d > 0), *(name in sys.modules for name in names))\n")
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "TORCH_HOME": str(vgg_torch_home), "GAUSSIAN_NO_DOWNLOAD": "1"}
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True,
                         env=env)
    assert out.stdout.split() == ["True", "False", "False", "False"]


def test_precision_names_and_switches():
    from utils.precision import check_precision, set_precision

    with pytest.raises(ValueError, match="fp16"):
        check_precision("fp16")
    set_precision("fp32")  # conftest restores the switches after the test
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    set_precision("tf32")
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision", ["tf32", "bf16"])
def test_cuda_lpips_fast_precision_agrees_with_fp32(vgg_torch_home, monkeypatch, precision):
    """LPIPS value and gradient in the fast precisions against fp32 on a real photograph and a degraded
    copy (bench/bench_lpips.py's pair), at 512x512: both within 1% in value. The gradient only in
    direction: tf32's is 5.0-5.5% off fp32 in relative L2 (cosine 0.9985; H200, session 6), short of issue
    13's 1%; tf32 stays the default because it is PyTorch's own default for cuDNN convolutions (the
    original code's LPIPS ran in TF32 on any Ampere or later GPU), and --precision fp32 is exact. bf16's is
    17% off (cosine 0.986; see test_lpips_bf16_trunk_on_the_cpu), which is why it is opt-in."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from bench_lpips import image_pair

    from utils.lpips_loader import load_lpips_vgg
    from utils.precision import set_precision

    monkeypatch.setenv("TORCH_HOME", str(vgg_torch_home))
    dev = torch.device("cuda")
    x, y = image_pair(dev)
    out = {}
    for name in ("fp32", precision):  # the switches are restored by conftest after the test
        set_precision(name, dev)
        model = load_lpips_vgg(dev, precision=name)
        xr = x.clone().requires_grad_(True)
        value = model(xr, y).sum()
        value.backward()
        out[name] = (float(value), xr.grad.double())
    (v32, g32), (v, g) = out["fp32"], out[precision]
    assert abs(v - v32) <= 0.01 * abs(v32)
    cosine = float(torch.nn.functional.cosine_similarity(g.flatten(), g32.flatten(), dim=0))
    if precision == "tf32":
        assert cosine >= 0.998 and float((g - g32).norm() / g32.norm()) <= 0.07
    else:
        assert cosine >= 0.98


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision", ["fp32", "tf32"])
def test_cuda_graphed_lpips_equals_eager(vgg_torch_home, monkeypatch, precision):
    """The training call captured as CUDA graphs gives the eager value and image gradient (the same kernels:
    the conv_relu fast path, which the captures alone take, is off here and has its own tests), on new
    inputs after the capture too, and an evaluation call (no gradient) still runs eagerly."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from bench_lpips import image_pair

    from utils.lpips_loader import load_lpips_vgg
    from utils.precision import set_precision

    monkeypatch.setenv("TORCH_HOME", str(vgg_torch_home))
    monkeypatch.setitem(fast_paths.ON, "conv_relu", False)
    dev = torch.device("cuda")
    set_precision(precision, dev)
    eager = load_lpips_vgg(dev, precision=precision)
    graphed = load_lpips_vgg(dev, precision=precision, cuda_graph=True)
    x, y = (t[0] for t in image_pair(dev))  # (3, H, W), as the trainer calls it
    for step in range(3):  # the first call captures; later ones replay on new data
        xs = (x * (1.0 - 0.1 * step)).clamp(0, 1)
        xe, xg = xs.clone().requires_grad_(True), xs.clone().requires_grad_(True)
        ve, vg = eager(xe, y), graphed(xg, y)
        ve.backward()
        vg.backward()
        assert graphed.graph_failure is None and graphed._graphed is not None
        assert abs(float(vg) - float(ve)) <= 1e-6 * abs(float(ve)) + 1e-9
        assert torch.allclose(xg.grad, xe.grad, rtol=1e-4, atol=1e-9)
    with torch.no_grad():
        assert torch.allclose(graphed(x, y), eager(x, y))


def _lpips_values_and_gradients(models: dict, x: torch.Tensor, y: torch.Tensor) -> dict:
    """Per model: (LPIPS value, image gradient in float64) of ``x`` against ``y``, each under its precision
    (the model named "fp32" under fp32, the others under tf32)."""
    from utils.precision import set_precision

    out = {}
    for name, model in models.items():
        set_precision("fp32" if name == "fp32" else "tf32", x.device)
        xr = x.clone().requires_grad_(True)
        value = model(xr, y).sum()
        value.backward()
        out[name] = (float(value), xr.grad.double())
    return out


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_captured_lpips_half_trunk_agrees_with_fp32(vgg_torch_home, monkeypatch):
    """Under --precision tf32 the captured training call runs the trunk in float16 (one forward batch for
    both images, cuDNN's fused convolution + ReLU, the gradient scaled): on bench_lpips.py's pair at 512x512
    and two darker copies, the value is within 0.1% of fp32 and the image gradient about as far from fp32's
    as eager TF32's (H200: 6.1% against TF32's 5.5%, cosine 0.9982 against 0.9985; the bound is 1.25x TF32's
    distance and cosine >= 0.997), after the capture and on replays; --no_fused_kernels (conv_relu off)
    does not take it. (lpips_fused off: it would run instead of half_trunk; its own test below.)"""
    import sys

    import utils.lpips_loader as lpips_loader

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from bench_lpips import image_pair


    monkeypatch.setenv("TORCH_HOME", str(vgg_torch_home))
    monkeypatch.setitem(fast_paths.ON, "lpips_fused", False)
    dev = torch.device("cuda")
    calls = []
    real = lpips_loader.half_trunk
    monkeypatch.setattr(lpips_loader, "half_trunk", lambda *a: calls.append(1) or real(*a))
    x, y = image_pair(dev)
    models = {"fp32": lpips_loader.load_lpips_vgg(dev, precision="fp32"),
              "tf32": lpips_loader.load_lpips_vgg(dev, precision="tf32"),
              "captured": lpips_loader.load_lpips_vgg(dev, precision="tf32", cuda_graph=True)}
    for step in range(3):  # capture, then replays on new data
        out = _lpips_values_and_gradients(models, (x * (1.0 - 0.1 * step)).clamp(0, 1), y)
        assert models["captured"].graph_failure is None
        (v32, g32), (_, gtf), (v, g) = out["fp32"], out["tf32"], out["captured"]
        assert abs(v - v32) <= 1e-3 * abs(v32)
        assert float(torch.nn.functional.cosine_similarity(g.flatten(), g32.flatten(), dim=0)) >= 0.997
        assert float((g - g32).norm()) <= 1.25 * float((gtf - g32).norm())
        assert not torch.equal(g, gtf)  # the captured call really took another path
    assert len(calls) == 1  # traced once, at the capture
    monkeypatch.setitem(fast_paths.ON, "conv_relu", False)
    plain = lpips_loader.load_lpips_vgg(dev, precision="tf32", cuda_graph=True)
    plain(x.clone().requires_grad_(True), y).sum().backward()
    assert len(calls) == 1


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_cuda_max_pool2x2_equals_torch(dtype):
    """fused_ops.max_pool2x2 (the lpips_pool fast path) gives torch's max-pool values, its choices name
    torch's argmax (ties and NaN included), and its backward gives torch's input gradient, for the kept
    images only."""
    import fused_ops

    if not fused_ops.available():
        pytest.skip("fused_ops._C is not built")
    dev = torch.device("cuda")
    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(3, 64, 10, 14, device=dev, generator=gen).to(dtype)
    x = torch.round(x * 2) / 2  # many ties within the windows
    x[0, 5, 2, 3] = float("nan")
    x[1, 7, 4:6, 4:6] = float("nan")
    x[2, 9, 0:2, 0:2] = float("-inf")
    x = x.contiguous(memory_format=torch.channels_last)
    assert fused_ops.max_pool2x2_fits(x) and not fused_ops.max_pool2x2_fits(x[..., :9])
    y, choice = fused_ops.max_pool2x2(x, keep=2)
    want, idx = torch.ops.aten.max_pool2d_with_indices(x, [2, 2], [2, 2], [0, 0], [1, 1], False)
    assert y.is_contiguous(memory_format=torch.channels_last) and torch.equal(y.isnan(), want.isnan())
    assert torch.equal(torch.nan_to_num(y), torch.nan_to_num(want))
    assert choice.shape == (2, 5, 7, 64) and choice.dtype == torch.uint8
    oy = torch.arange(5, device=dev).view(1, 1, 5, 1)
    ox = torch.arange(7, device=dev).view(1, 1, 1, 7)
    c = choice.permute(0, 3, 1, 2).long()
    flat = (2 * oy + c // 2) * 14 + 2 * ox + c % 2  # torch's flat index within the image
    assert torch.equal(flat, idx[:2])
    grad = torch.randn(2, 64, 5, 7, device=dev, generator=gen).to(dtype).contiguous(
        memory_format=torch.channels_last)
    got = fused_ops.max_pool2x2_backward(grad, choice)
    like = torch.empty(2, 64, 10, 14, device=dev, dtype=dtype).contiguous(memory_format=torch.channels_last)
    ref = torch.ops.aten.max_pool2d_with_indices_backward(grad, like, [2, 2], [2, 2], [0, 0], [1, 1], False,
                                                          idx[:2])
    assert got.is_contiguous(memory_format=torch.channels_last) and torch.equal(got, ref)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_half_trunk_with_fused_pool_equals_torch_pool(vgg_torch_home, monkeypatch):
    """The lpips_pool fast path leaves the captured half-trunk LPIPS value and image gradient unchanged
    bit for bit (pooling is exact; cuDNN made deterministic), and is really taken."""
    import sys

    import fused_ops

    import utils.lpips_loader as lpips_loader

    if not fused_ops.available():
        pytest.skip("fused_ops._C is not built")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from bench_lpips import image_pair

    from utils.precision import set_precision

    monkeypatch.setenv("TORCH_HOME", str(vgg_torch_home))
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)  # bit-equal runs
    monkeypatch.setitem(fast_paths.ON, "lpips_fused", False)  # the half trunk, whose pools are switched
    dev = torch.device("cuda")
    set_precision("tf32", dev)
    x, y = image_pair(dev)
    calls = []
    real = fused_ops.max_pool2x2
    monkeypatch.setattr(fused_ops, "max_pool2x2", lambda *a: calls.append(1) or real(*a))
    out = {}
    for on in (False, True):
        monkeypatch.setitem(fast_paths.ON, "lpips_pool", on)
        model = lpips_loader.load_lpips_vgg(dev, precision="tf32", cuda_graph=True)
        for _ in range(2):  # capture, replay
            xr = x.clone().requires_grad_(True)
            value = model(xr, y).sum()
            value.backward()
        out[on] = (float(value), xr.grad)
    assert len(calls) == 4  # four pools, traced once at the capture
    assert out[True][0] == out[False][0] and torch.equal(out[True][1], out[False][1])


def _half_grad_scale(amax: float, gout: torch.Tensor) -> float:
    """fused_ops.lpips_half_*'s power of two: 2^floor(log2(4096 / (amax max|gout|))), exactly."""
    import math

    _, e = math.frexp(4096.0 / max(amax * float(gout.abs().max()), 1e-30))
    return 2.0 ** (e - 1)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_lpips_half_kernels_match_their_formulas():
    """fused_ops' float16 LPIPS pieces against torch on small random maps (2 images, 6x10 pixels: warps
    that end part-way, a zero feature vector): the scaled input bit for bit, the layer distance and the
    largest ReLU-passed feature gradient against float64 autograd, the one-pass slice gradient against
    autograd + torch's pool backward + the ReLU mask, the in-place mask and the image gradient against
    torch's elementwise ops."""
    import fused_ops

    if not fused_ops.available():
        pytest.skip("fused_ops._C is not built")
    dev, cl = torch.device("cuda"), torch.channels_last
    gen = torch.Generator(device="cuda").manual_seed(0)
    n, C, H, W = 2, 16, 6, 10
    shift = torch.tensor([-0.030, -0.088, -0.188], device=dev)
    scale = torch.tensor([0.458, 0.448, 0.450], device=dev)
    x, y = (torch.rand(n, 3, H, W, device=dev, generator=gen) for _ in range(2))
    prep = fused_ops.lpips_half_prep(x, y, shift, scale, 8)
    want = torch.cat([((x * 2.0 - 1.0) - shift.view(1, 3, 1, 1)) / scale.view(1, 3, 1, 1),
                      ((y * 2.0 - 1.0) - shift.view(1, 3, 1, 1)) / scale.view(1, 3, 1, 1)]).half()
    assert prep.shape == (2 * n, 8, H, W) and prep.is_contiguous(memory_format=cl)
    assert torch.equal(prep[:, :3], want) and not prep[:, 3:].any()

    feat = torch.randn(2 * n, C, H, W, device=dev, generator=gen).relu()
    feat[0, :, 1, 1] = 0  # a vanishing render feature: its 1/eps gradient is masked away by the ReLU
    feat = feat.half().contiguous(memory_format=cl)
    w = torch.rand(C, device=dev, generator=gen)
    d = torch.full((n, 5 + H * W + 3), float("nan"), device=dev)
    amax = torch.zeros(1, device=dev)
    fused_ops.lpips_half_distance(feat, w, d, 5, amax)
    a = feat[:n].double().requires_grad_(True)
    b = feat[n:].double()
    eps = 1e-10
    e = a / (a.pow(2).sum(1, keepdim=True).sqrt() + eps) - b / (b.pow(2).sum(1, keepdim=True).sqrt() + eps)
    dist = (w.double().view(1, C, 1, 1) * e * e).sum(1) / (H * W)
    (grad,) = torch.autograd.grad(dist.sum(), a)
    passed = torch.where(a.detach() > 0, grad, 0.0)  # NaN (sqrt at 0) only where the mask drops it
    assert torch.isnan(d[:, :5]).all() and torch.isnan(d[:, 5 + H * W:]).all()
    assert torch.allclose(d[:, 5:5 + H * W].double(), dist.detach().flatten(1), rtol=1e-5, atol=1e-9)
    assert math.isclose(float(amax), float(passed.abs().max()), rel_tol=1e-4)

    gout = torch.tensor([0.7, -1.3], device=dev)
    s = _half_grad_scale(float(amax), gout)
    pooled, choice = fused_ops.max_pool2x2(feat, n)
    g_next = (torch.randn(n, C, H // 2, W // 2, device=dev, generator=gen) * 1000).half().contiguous(
        memory_format=cl)
    _, idx = torch.ops.aten.max_pool2d_with_indices(feat[:n], [2, 2], [2, 2], [0, 0], [1, 1], False)
    through_pool = torch.ops.aten.max_pool2d_with_indices_backward(
        g_next.double(), feat[:n].double(), [2, 2], [2, 2], [0, 0], [1, 1], False, idx)
    for nxt in (None, g_next):
        got = fused_ops.lpips_half_backward(feat, w, gout, amax, nxt, None if nxt is None else choice)
        expect = s * gout.double().view(n, 1, 1, 1) * grad + (0 if nxt is None else through_pool)
        expect = torch.where(a.detach() > 0, expect, 0.0)
        assert got.shape == (n, C, H, W) and got.dtype == torch.float16
        assert got.is_contiguous(memory_format=cl)
        assert float(expect.abs().max()) > 1000  # the scale brought the gradient into float16's range
        assert torch.allclose(got.double(), expect, rtol=2e-3, atol=0.05)

    g = torch.randn(n, C, H, W, device=dev, generator=gen).half().contiguous(memory_format=cl)
    ref = feat.clone()
    ref[1, 3, 2, 2] = float("nan")  # threshold_backward keeps the gradient where the output is NaN
    masked = g.clone()
    fused_ops.lpips_half_relu_mask(masked, ref)
    assert torch.equal(masked, torch.ops.aten.threshold_backward(g, ref[:n], 0.0))

    g8 = torch.randn(n, 8, H, W, device=dev, generator=gen).half().contiguous(memory_format=cl)
    image_grad = fused_ops.lpips_half_prep_backward(g8, scale, amax, gout)
    assert torch.equal(image_grad, g8[:, :3].float() / s / scale.view(1, 3, 1, 1) * 2.0)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("channels", [3, 8])
def test_cuda_fused_half_lpips_equals_the_half_trunk(vgg_torch_home, monkeypatch, channels):
    """The lpips_fused fast path (the captured float16 LPIPS as one function over fused_ops' kernels) gives
    the half trunk's value and image gradient on bench_lpips.py's pair at 512x512 and two darker copies,
    after the capture and on replays, with the first convolution's input as the image's 3 channels or
    zero-padded to 8 (the default: other cuDNN kernels, so only as close as two float16 trunks get);
    against fp32 it keeps the half trunk's bound (1.25x eager TF32's distance)."""
    import sys

    import utils.lpips_loader as lpips_loader

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from bench_lpips import image_pair


    monkeypatch.setenv("TORCH_HOME", str(vgg_torch_home))
    monkeypatch.setattr(lpips_loader, "FIRST_CONV_CHANNELS", channels)
    dev = torch.device("cuda")
    calls = []
    real = lpips_loader.fused_half_lpips
    monkeypatch.setattr(lpips_loader, "fused_half_lpips", lambda *a: calls.append(1) or real(*a))
    x, y = image_pair(dev)
    models = {"fp32": lpips_loader.load_lpips_vgg(dev, precision="fp32"),
              "tf32": lpips_loader.load_lpips_vgg(dev, precision="tf32")}
    for on in (False, True):
        monkeypatch.setitem(fast_paths.ON, "lpips_fused", on)
        models[on] = lpips_loader.load_lpips_vgg(dev, precision="tf32", cuda_graph=True)
        models[on](x.clone().requires_grad_(True), y).sum().backward()  # capture with the switch as set
    monkeypatch.setitem(fast_paths.ON, "lpips_fused", True)
    for step in range(3):
        out = _lpips_values_and_gradients(models, (x * (1.0 - 0.1 * step)).clamp(0, 1), y)
        (v32, g32), (_, gtf), (vh, gh), (v, g) = out["fp32"], out["tf32"], out[False], out[True]
        assert abs(v - vh) <= 1e-5 * abs(vh)
        cosine = float(torch.nn.functional.cosine_similarity(g.flatten(), gh.flatten(), dim=0))
        if channels == 3:  # the same cuDNN kernels: only the gradient's float16 roundings differ
            assert float((g - gh).norm() / gh.norm()) <= 0.01 and cosine >= 0.9999
        else:  # cuDNN's kernels for 8 input channels round otherwise: 2.6-4.8% through the random VGG
            # (H200), as far apart as two valid evaluations get (eager TF32 is 5.5% from fp32)
            assert float((g - gh).norm() / gh.norm()) <= 0.08 and cosine >= 0.998
        assert abs(v - v32) <= 1e-3 * abs(v32)
        assert float((g - g32).norm()) <= 1.25 * float((gtf - g32).norm())
    assert models[True].graph_failure is None and models[False].graph_failure is None
    assert models[True]._fused_warm and not models[False]._fused_warm  # run eagerly once before capture
    assert models["tf32"]._fused_warm  # an eager training call warms the path a capture would take
    assert len(calls) == 3  # the graphed model's warm-up and capture trace, the eager tf32 model's warm-up


def _assert_fast_path_keeps_lpips(model, x, y, path: str, monkeypatch, calls: int = 1) -> None:
    """With fast path ``path`` off and on, the training call's LPIPS value and image gradient (after
    ``calls`` calls: a graphed model captures at the first) and the evaluation call's value agree (fp32)."""
    out = {}
    for on in (False, True):
        monkeypatch.setitem(fast_paths.ON, path, on)
        model._graphed = None  # capture again with the switch as set
        for _ in range(calls):
            xr = x.clone().requires_grad_(True)
            value = model(xr, y).sum()
            value.backward()
        with torch.no_grad():
            evaluation = float(model(x, y).sum())
        out[on] = (float(value), xr.grad, evaluation)
    (v0, g0, e0), (v1, g1, e1) = out[False], out[True]
    assert abs(v1 - v0) <= 1e-5 * abs(v0) and abs(e1 - e0) <= 1e-5 * abs(e0)
    assert float((g1 - g0).norm() / g0.norm()) <= 1e-4


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_fused_lpips_distance_equals_the_unfused_one(vgg_torch_home, monkeypatch):
    """The lpips_distance fast path (fused_ops' one-pass layer distance) gives the unfused LPIPS value
    and image gradient in fp32 on bench_lpips.py's pair, for the training call (gradient to the render) and
    the evaluation call; the layer kernel alone matches the formula on random channels-last maps, including
    a pixel whose features are all zero."""
    import sys

    import fused_ops

    import utils.lpips_loader as lpips_mod

    if not fused_ops.available():
        pytest.skip("fused_ops._C is not built")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from bench_lpips import image_pair

    from utils.precision import set_precision

    monkeypatch.setenv("TORCH_HOME", str(vgg_torch_home))
    dev = torch.device("cuda")
    set_precision("fp32", dev)
    gen = torch.Generator(device="cuda").manual_seed(0)
    a = torch.randn(2, 64, 9, 7, device=dev, generator=gen).relu().to(memory_format=torch.channels_last)
    b = torch.randn(2, 64, 9, 7, device=dev, generator=gen).relu().to(memory_format=torch.channels_last)
    a[0, :, 3, 2] = 0.0  # an all-zero feature vector
    w = torch.rand(64, device=dev, generator=gen)
    ar, ap = a.clone().requires_grad_(True), a.clone().requires_grad_(True)
    want = (((lpips_mod._unit(ar) - lpips_mod._unit(b)) ** 2) * w.view(1, -1, 1, 1)).sum(1)
    got = fused_ops.lpips_layer_distance(ap, b, w)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-7)
    weights = torch.rand(want.shape, device=dev, generator=gen)
    (got * weights).sum().backward()
    mask = torch.ones_like(want, dtype=torch.bool)
    mask[0, 3, 2] = False  # torch's gradient is NaN there (sqrt at 0); the kernel's is finite
    (want * weights)[mask].sum().backward()
    assert torch.isfinite(ap.grad).all()
    ok = mask.unsqueeze(1).expand_as(ap.grad)
    assert torch.allclose(ap.grad[ok], ar.grad[ok], rtol=1e-4, atol=1e-7)
    x, y = image_pair(dev)
    model = lpips_mod.load_lpips_vgg(dev, precision="fp32")
    _assert_fast_path_keeps_lpips(model, x, y, "lpips_distance", monkeypatch)


def test_fused_conv_relu_backward_on_the_cpu(vgg_torch_home, monkeypatch):
    """The fused trunk's hand-written backward (ReLU mask from the output, then the convolution's input
    gradient) gives autograd's image gradient through the module trunk; cuDNN's fused forward is stood in
    for by conv2d + relu on the CPU."""
    import torch.nn.functional as F

    import utils.lpips_loader as lpips_mod
    from utils.lpips_trunk import fused_vgg_trunk

    monkeypatch.setenv("TORCH_HOME", str(vgg_torch_home))
    monkeypatch.setattr(torch, "cudnn_convolution_relu",
                        lambda x, w, b, *geometry: F.conv2d(x, w, b, *geometry).relu())
    vgg = lpips_mod.load_lpips_vgg("cpu", precision="fp32").net.net
    x = torch.rand(1, 3, 40, 36, generator=torch.Generator().manual_seed(3), dtype=torch.float32) * 2 - 1
    weights = [torch.rand(f.shape, generator=torch.Generator().manual_seed(k)) for k, f in enumerate(vgg(x))]
    grads = []
    for trunk in (vgg, lambda a: fused_vgg_trunk(vgg, a)):
        xr = x.clone().requires_grad_(True)
        sum((f * w).sum() for f, w in zip(trunk(xr), weights)).backward()
        grads.append(xr.grad)
    assert grads[0].abs().max() > 0
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-6)


def _rounding_conv_relu(x, w, b, *geometry):
    """cuDNN's fused convolution + bias + ReLU on the CPU with its reduced-precision arithmetic: inputs and
    weights in their (forward) dtype, products summed in float32, the output rounded to the input's dtype."""
    import torch.nn.functional as F

    return F.conv2d(x.float(), w.float(), b.float(), *geometry).relu().to(x.dtype)


def _rounding_conv_input_grad(grad, like, conv, weight):
    """cuDNN's convolution input gradient on the CPU with its reduced-precision arithmetic (as above)."""
    return torch.nn.grad.conv2d_input(like.shape, weight.float(), grad.float(), conv.stride, conv.padding,
                                      conv.dilation, conv.groups).to(grad.dtype)


def test_half_trunk_backward_and_second_image_on_the_cpu(vgg_torch_home, monkeypatch):
    """half_trunk's hand-written backward (gradient scaling, ReLU masks and max-pool choices of the batched
    forward, the convolutions' input gradients) gives autograd's gradient through the module trunk when it
    runs in float32; the second image's features are the module's and carry no gradient."""
    import utils.lpips_loader as lpips_mod
    from utils import lpips_trunk
    from utils.lpips_trunk import HalfTrunkWeights, half_trunk

    monkeypatch.setenv("TORCH_HOME", str(vgg_torch_home))
    monkeypatch.setattr(torch, "cudnn_convolution_relu", _rounding_conv_relu)
    monkeypatch.setattr(lpips_trunk, "_conv_input_grad", _rounding_conv_input_grad)
    vgg = lpips_mod.load_lpips_vgg("cpu", precision="fp32").net.net
    gen = torch.Generator().manual_seed(3)
    x, y = (torch.rand(1, 3, 40, 36, generator=gen) * 2 - 1 for _ in range(2))
    weights = [torch.rand(f.shape, generator=torch.Generator().manual_seed(k)) for k, f in enumerate(vgg(x))]
    xr, xh = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    sum((f * w).sum() for f, w in zip(vgg(xr), weights)).backward()
    fx, fy = half_trunk(HalfTrunkWeights(vgg, torch.float32), xh, y)
    sum((f * w).sum() for f, w in zip(fx, weights)).backward()
    assert xr.grad.abs().max() > 0
    torch.testing.assert_close(xh.grad, xr.grad, rtol=1e-4, atol=1e-6)
    for got, want in zip(fy, vgg(y)):
        assert not got.requires_grad and got.dtype == torch.float32
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


class _TorchLPIPSHalfOps:
    """fused_ops' float16 LPIPS kernels (csrc/lpips_half.cu) and byte-choice pool written in torch from their
    documented formulas, for the CPU: float64 autograd for the distance's gradient, float16 results."""

    @staticmethod
    def lpips_half_prep(x, y, shift, scale, channels):
        v = ((torch.cat([x, y]) * 2.0 - 1.0) - shift.view(1, 3, 1, 1)) / scale.view(1, 3, 1, 1)
        v = torch.nn.functional.pad(v, (0, 0, 0, 0, 0, channels - 3))
        return v.half().contiguous(memory_format=torch.channels_last)

    @staticmethod
    def max_pool2x2_fits(h):
        return False  # the half trunk (the reference here) keeps torch's pools and their int64 indices

    @staticmethod
    def max_pool2x2(h, keep):
        out, idx = torch.ops.aten.max_pool2d_with_indices(h, [2, 2], [2, 2], [0, 0], [1, 1], False)
        width = h.shape[3]
        choice = (idx // width % 2) * 2 + idx % width % 2
        return out, choice[:keep].permute(0, 2, 3, 1).to(torch.uint8).contiguous()

    @staticmethod
    def _distance_grad(feat, w, gout, eps):
        """(render features a, per-pixel distance / (H W), its gradient for output gradient gout) in float64
        (autograd runs inside the custom function's forward and backward too)."""
        n = feat.shape[0] // 2
        with torch.enable_grad():
            a = feat[:n].double().requires_grad_(True)
            b = feat[n:].double()
            e = (a / (a.pow(2).sum(1, keepdim=True).sqrt() + eps)
                 - b / (b.pow(2).sum(1, keepdim=True).sqrt() + eps))
            dist = (w.double().view(1, -1, 1, 1) * e * e).sum(1) / (feat.shape[2] * feat.shape[3])
            (g,) = torch.autograd.grad((dist * gout.double().view(n, 1, 1)).sum(), a)
        return a.detach(), dist.detach(), g

    @classmethod
    def lpips_half_distance(cls, feat, w, d, offset, amax, eps=1e-10):
        a, dist, g = cls._distance_grad(feat, w, torch.ones(feat.shape[0] // 2), eps)
        d[:, offset:offset + dist[0].numel()] = dist.flatten(1).float()
        amax.copy_(torch.maximum(amax, torch.where(a > 0, g, 0.0).abs().max().float()))

    @classmethod
    def lpips_half_backward(cls, feat, w, gout, amax, g_next=None, choice=None, eps=1e-10):
        height, width = feat.shape[2:]
        a, _, g = cls._distance_grad(feat, w, gout, eps)
        out = _half_grad_scale(float(amax), gout) * g
        if g_next is not None:
            def up(t):
                return t.repeat_interleave(2, 2).repeat_interleave(2, 3)
            sel = (torch.arange(height) % 2 * 2).view(-1, 1) + torch.arange(width) % 2
            out = out + torch.where(up(choice.permute(0, 3, 1, 2).long()) == sel, up(g_next.double()), 0.0)
        return torch.where(a > 0, out, 0.0).half().contiguous(memory_format=torch.channels_last)

    @staticmethod
    def lpips_half_relu_mask(g, y):
        g.copy_(torch.ops.aten.threshold_backward(g, y[: g.shape[0]], 0.0))

    @staticmethod
    def lpips_half_prep_backward(g, scale, amax, gout):
        return g[:, :3].float() / _half_grad_scale(float(amax), gout) / scale.view(1, 3, 1, 1) * 2.0


@pytest.mark.parametrize("channels", [3, 8])
def test_fused_half_lpips_on_the_cpu_with_torch_kernels(vgg_torch_home, monkeypatch, channels):
    """fused_half_lpips' orchestration (the slices, which pool's choices route which gradient, the scale,
    the first convolution's padded input) with fused_ops' float16 kernels written in torch: the half
    trunk's value and image gradient on the CPU (float16 rounding reproduced in both), on a 64x48 crop of
    bench_lpips.py's pair."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from bench_lpips import image_pair

    import utils.lpips_loader as lpips_loader
    from utils import lpips_trunk
    from utils.lpips_trunk import FusedHalfLPIPS, HalfTrunkWeights, fused_half_lpips

    monkeypatch.setenv("TORCH_HOME", str(vgg_torch_home))
    monkeypatch.setattr(torch, "cudnn_convolution_relu", _rounding_conv_relu)
    monkeypatch.setattr(lpips_trunk, "_conv_input_grad", _rounding_conv_input_grad)
    monkeypatch.setattr(lpips_trunk, "fused_kernels", lambda: _TorchLPIPSHalfOps)
    x, y = (t[..., 200:264, 220:268].contiguous() for t in image_pair(torch.device("cpu")))
    model = lpips_loader.load_lpips_vgg("cpu", precision="fp32")
    half = HalfTrunkWeights(model.net.net, torch.float16)
    scaling = model.net.scaling_layer
    net = FusedHalfLPIPS(half, [h.model[-1].weight for h in model.net.lins], scaling.shift, scaling.scale,
                         channels)
    assert not net.fits(x, y)  # the real kernels are CUDA's: LPIPSVGG never routes CPU images here
    xf = x.clone().requires_grad_(True)
    value = fused_half_lpips(net, xf, y)
    value.sum().backward()
    model._half_weights = half  # the half trunk + layer distances, as the capture ran them before
    monkeypatch.setattr(model, "_half_trunk_ok", lambda a, b, assume_captured=False: True)
    monkeypatch.setattr(model, "_fused_half_ok", lambda a, b, assume_captured=False: False)
    xh = x.clone().requires_grad_(True)
    reference = model(xh, y)
    reference.sum().backward()
    assert value.shape == reference.shape == (1,)
    v, v_ref = float(value.detach()), float(reference.detach())
    assert abs(v - v_ref) <= 1e-4 * v_ref
    assert float(xh.grad.abs().max()) > 0
    rel = float((xf.grad - xh.grad).norm() / xh.grad.norm())
    cosine = float(torch.nn.functional.cosine_similarity(xf.grad.flatten(), xh.grad.flatten(), dim=0))
    assert rel <= 5e-3 and cosine >= 0.99999  # 4.8e-4 and 0.9999999: float16 roundings in another order


def test_lpips_half_trunk_on_the_cpu(vgg_torch_home, monkeypatch):
    """--precision tf32's captured training call runs LPIPS' trunk in float16 (both images' forward in one
    batch, the gradient scaled). With float16's rounding reproduced on the CPU, on bench_lpips.py's pair (a
    256x256 crop): the value within 0.01% of float32 and the image gradient as far from float32 as TF32's
    on the H200 (measured 4.5e-5 and 5.6%, cosine 0.9985; TF32: 5.5%, cosine 0.9985), all of it from the
    forward (a float32 backward gives the same 5.6%): LPIPS' image gradient is ill-conditioned (a float32
    forward batched differently moves it by 0.2%), so any 10-bit forward moves it this much. A bfloat16
    forward moves it 16%."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from bench_lpips import image_pair

    import utils.lpips_loader as lpips_loader
    from utils import lpips_trunk
    from utils.lpips_trunk import HalfTrunkWeights

    monkeypatch.setenv("TORCH_HOME", str(vgg_torch_home))
    monkeypatch.setattr(torch, "cudnn_convolution_relu", _rounding_conv_relu)
    monkeypatch.setattr(lpips_trunk, "_conv_input_grad", _rounding_conv_input_grad)
    x, y = (t[..., 128:384, 128:384].contiguous() for t in image_pair(torch.device("cpu")))
    calls = []
    real = lpips_loader.half_trunk
    monkeypatch.setattr(lpips_loader, "half_trunk", lambda *a: calls.append(1) or real(*a))
    out = {}
    for name in ("fp32", "fp16"):
        model = lpips_loader.load_lpips_vgg("cpu", precision="fp32")
        if name == "fp16":  # the capture's path, on the CPU
            model._half_weights = HalfTrunkWeights(model.net.net, torch.float16)
            monkeypatch.setattr(model, "_half_trunk_ok", lambda a, b, assume_captured=False: True)
        xr = x.clone().requires_grad_(True)
        value = model(xr, y).sum()
        value.backward()
        out[name] = (float(value), xr.grad.double())
    assert calls == [1]
    (v32, g32), (v16, g16) = out["fp32"], out["fp16"]
    assert abs(v16 - v32) <= 1e-4 * v32
    assert float(torch.nn.functional.cosine_similarity(g16.flatten(), g32.flatten(), dim=0)) >= 0.998
    assert 1e-4 <= float((g16 - g32).norm() / g32.norm()) <= 0.07  # really float16, and no worse than TF32


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_fused_conv_relu_trunk_equals_the_module_trunk(vgg_torch_home, monkeypatch):
    """The conv_relu fast path (cuDNN's fused convolution + bias + ReLU, our backward; used inside
    CUDA-graph captures) gives the module trunk's five feature maps, and LPIPS value and image gradient in
    fp32 on bench_lpips.py's pair in the captured training call; the ground truth's branch keeps no graph."""
    import sys

    import utils.lpips_loader as lpips_mod
    from utils.lpips_trunk import fusable_trunk, fused_vgg_trunk

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from bench_lpips import image_pair

    from utils.precision import set_precision

    monkeypatch.setenv("TORCH_HOME", str(vgg_torch_home))
    dev = torch.device("cuda")
    set_precision("fp32", dev)
    x, y = image_pair(dev)
    model = lpips_mod.load_lpips_vgg(dev, precision="fp32", cuda_graph=True)
    vgg = model.net.net
    a = (x * 2 - 1).contiguous(memory_format=torch.channels_last)
    assert fusable_trunk(vgg, a) and not fusable_trunk(vgg, a.cpu())
    with torch.no_grad():
        want, got = vgg(a), fused_vgg_trunk(vgg, a)
    assert len(got) == 5
    for w, g in zip(want, got):
        assert g.shape == w.shape and bool((g >= 0).all())
        assert float((g - w).norm() / w.norm()) <= 1e-5
    with torch.no_grad():
        gt = fused_vgg_trunk(vgg, a)
    assert all(f.grad_fn is None for f in gt)
    _assert_fast_path_keeps_lpips(model, x, y, "conv_relu", monkeypatch, calls=2)  # capture, then replay


def test_lpips_bf16_trunk_on_the_cpu(vgg_torch_home, monkeypatch):
    """--precision bf16 runs LPIPS' VGG trunk in bfloat16 autocast (GPU only); the CPU's bfloat16 autocast
    (float32 accumulation, as cuDNN's) shows what that costs on bench/bench_lpips.py's pair (its central
    128x128 crop: on a 2-core CPU without bfloat16 instructions the 256x256 crop took 212 s, this one 37 s):
    the value stays within 0.5% of float32, the image gradient only in direction (cosine >= 0.98; measured
    0.992, a 13% relative L2 difference; 0.987 and 16% at 256x256), short of the 1% issue 13 asks, which is
    why tf32, not bf16, is the default."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from bench_lpips import image_pair

    import utils.lpips_loader as lpips_loader

    monkeypatch.setenv("TORCH_HOME", str(vgg_torch_home))
    x, y = (t[..., 192:320, 192:320].contiguous() for t in image_pair(torch.device("cpu")))
    out = {}
    for name in ("fp32", "bf16"):
        model = lpips_loader.load_lpips_vgg("cpu", precision=name)
        if name == "bf16":  # the GPU's autocast, on the CPU
            monkeypatch.setattr(lpips_loader, "trunk_autocast",
                                lambda precision, device: torch.autocast("cpu", dtype=torch.bfloat16))
        xr = x.clone().requires_grad_(True)
        value = model(xr, y).sum()
        value.backward()
        out[name] = (float(value), xr.grad.double())
    (v32, g32), (v16, g16) = out["fp32"], out["bf16"]
    assert abs(v16 - v32) <= 0.005 * v32
    assert float(torch.nn.functional.cosine_similarity(g16.flatten(), g32.flatten(), dim=0)) >= 0.98
    assert not torch.allclose(g16, g32)  # the bf16 path was really taken
