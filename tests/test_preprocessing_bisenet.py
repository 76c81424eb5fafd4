"""BiSeNet face parsing: checkpoint layout, forward pass, loading, class rules."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from preprocessing.bisenet import BiSeNet, expected_state_dict_layout, load_bisenet, parse_labels
from preprocessing.semantic import BiSeNetBackend, make_backend, masks_from_labels, parse_folder
from utils.image_io import read_mask, write_image

# Hand-picked entries of the official 79999_iter.pth (face-parsing.PyTorch), read off its architecture:
# ResNet-18 stem and projection shortcuts, the attention modules, the fusion module's squeeze-excitation,
# and the three 19-class heads.
OFFICIAL_SAMPLES = {
    "cp.resnet.conv1.weight": (64, 3, 7, 7),
    "cp.resnet.bn1.running_var": (64,),
    "cp.resnet.layer1.0.conv1.weight": (64, 64, 3, 3),
    "cp.resnet.layer2.0.conv1.weight": (128, 64, 3, 3),
    "cp.resnet.layer2.0.downsample.0.weight": (128, 64, 1, 1),
    "cp.resnet.layer2.0.downsample.1.num_batches_tracked": (),
    "cp.resnet.layer4.1.conv2.weight": (512, 512, 3, 3),
    "cp.arm16.conv.conv.weight": (128, 256, 3, 3),
    "cp.arm32.conv_atten.weight": (128, 128, 1, 1),
    "cp.arm32.bn_atten.bias": (128,),
    "cp.conv_avg.conv.weight": (128, 512, 1, 1),
    "cp.conv_head16.conv.weight": (128, 128, 3, 3),
    "ffm.convblk.conv.weight": (256, 256, 1, 1),
    "ffm.conv1.weight": (64, 256, 1, 1),
    "ffm.conv2.weight": (256, 64, 1, 1),
    "conv_out.conv.conv.weight": (256, 256, 3, 3),
    "conv_out.conv_out.weight": (19, 256, 1, 1),
    "conv_out16.conv.conv.weight": (64, 128, 3, 3),
    "conv_out32.conv_out.weight": (19, 64, 1, 1),
}


@pytest.fixture(scope="module")
def model() -> BiSeNet:
    torch.manual_seed(0)
    return BiSeNet().eval()


def test_layout_matches_official(model: BiSeNet) -> None:
    layout = expected_state_dict_layout()
    state = model.state_dict()
    assert list(state) == list(layout)  # same keys, same order
    for k, shape in layout.items():
        assert tuple(state[k].shape) == shape, k
    for k, shape in OFFICIAL_SAMPLES.items():
        assert layout[k] == shape, k
    # no downsample in layer1 (64 -> 64, stride 1) nor in the second block of any layer
    assert not [k for k in layout if "layer1.0.downsample" in k or ".1.downsample" in k]
    # 20 convs + 20 BNs in ResNet-18 (incl. 3 projections), 2 ARMs, 3 heads, FFM: 191 entries, 13.30M weights
    assert len(layout) == 191
    n_params = sum(
        int(np.prod(s))
        for k, s in layout.items()
        if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))
    )
    assert n_params == sum(p.numel() for p in model.parameters()) == 13_300_416


def test_forward_512(model: BiSeNet) -> None:
    x = torch.randn(1, 3, 512, 512)
    with torch.no_grad():
        out = model(x)
        main, aux16, aux32 = model.forward_all(x[:, :, :128, :128])
        main_only = model(x[:, :, :128, :128])
    assert out.shape == (1, 19, 512, 512) and torch.isfinite(out).all()
    assert main.shape == aux16.shape == aux32.shape == (1, 19, 128, 128)
    assert torch.allclose(main, main_only)
    img = (np.random.default_rng(0).random((2, 64, 48, 3)) * 255).astype(np.uint8)
    labels = parse_labels(model, img, size=128)  # resized to 128 for the network, back to 64x48
    assert labels.shape == (2, 64, 48) and labels.dtype == np.uint8 and labels.max() < 19


def test_load_official_layout(tmp_path: Path, model: BiSeNet) -> None:
    state = model.state_dict()
    path = tmp_path / "79999_iter.pth"
    torch.save(state, path)
    loaded = load_bisenet(path)
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, state[k]), k
    # checkpoints saved from nn.DataParallel or without num_batches_tracked load too
    alt = {f"module.{k}": v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    torch.save(alt, tmp_path / "dp.pth")
    assert torch.equal(load_bisenet(tmp_path / "dp.pth").ffm.conv1.weight, state["ffm.conv1.weight"])


def test_load_errors(tmp_path: Path, model: BiSeNet) -> None:
    with pytest.raises(FileNotFoundError, match=r"79999_iter\.pth.*face-parsing\.PyTorch"):
        load_bisenet(tmp_path / "missing.pth")
    state = dict(model.state_dict())
    state["conv_out.conv_out.weight"] = torch.zeros(5, 256, 1, 1)  # a 5-class head
    torch.save(state, tmp_path / "wrong.pth")
    with pytest.raises(ValueError, match=r"wrong shape.*conv_out\.conv_out\.weight"):
        load_bisenet(tmp_path / "wrong.pth")
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(ValueError, match="cannot read"):
        load_bisenet(tmp_path / "junk.pth")
    from preprocessing.rvm import ModelNotFoundError

    with pytest.raises(ModelNotFoundError, match="79999_iter.pth"):
        make_backend("bisenet")


def test_class_rules() -> None:
    labels = np.arange(19, dtype=np.uint8).reshape(1, 19).repeat(2, axis=0)
    neckhead, mouth = masks_from_labels(labels)
    assert neckhead[0].tolist() == [c not in (0, 16) for c in range(19)]
    assert mouth[0].tolist() == [c in (11, 12, 13) for c in range(19)]


def test_bisenet_backend_writes_masks(tmp_path: Path, model: BiSeNet, monkeypatch) -> None:
    """The BiSeNet backend writes exactly the class rules of its labels (network stubbed to fixed labels)."""
    torch.save(model.state_dict(), tmp_path / "w.pth")
    backend = BiSeNetBackend(tmp_path / "w.pth", device="cpu")
    labels = np.zeros((32, 32), dtype=np.uint8)
    labels[4:20, 8:24] = 1  # skin
    labels[14:18, 12:20] = 12  # upper lip
    labels[20:28, 10:22] = 14  # neck
    labels[28:, :] = 16  # cloth
    monkeypatch.setattr("preprocessing.semantic.parse_labels", lambda m, rgb: labels[None])
    write_image(tmp_path / "comp" / "00000.png", np.ones((32, 32, 3)))
    parse_folder(tmp_path / "comp", backend=backend, show_progress=False)
    nh = read_mask(tmp_path / "parsing" / "00000_neckhead.png") > 0.5
    mo = read_mask(tmp_path / "parsing" / "00000_mouth.png") > 0.5
    assert np.array_equal(nh, (labels != 0) & (labels != 16))
    assert np.array_equal(mo, labels == 12)


@pytest.mark.cuda
def test_bisenet_cuda_matches_cpu(model: BiSeNet) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    x = torch.randn(2, 3, 512, 512)
    with torch.no_grad():
        cpu = model(x)
        gpu = model.to("cuda")(x.cuda()).cpu()
    model.to("cpu")
    assert (cpu - gpu).abs().max() < 1e-2 * cpu.abs().max()  # TF32 convolutions on recent GPUs
    img = (np.random.default_rng(1).random((1, 96, 80, 3)) * 255).astype(np.uint8)
    labels_gpu = parse_labels(model.to("cuda"), img)
    labels_cpu = parse_labels(model.to("cpu"), img)
    assert (labels_gpu == labels_cpu).mean() > 0.98
