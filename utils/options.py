"""Typed option groups shared by ``train.py``, ``render.py`` and ``metrics.py``; one parser builder.

Each group is a dataclass with an ``add_arguments(parser)`` that declares its flags and a
``from_args(namespace)`` that reads them back typed. Defaults follow SPEC sections 1, 8, 9, 10. Every
path root is a flag (``--data_root``, ``--tracking_root``, ``--flame_dir``, ``--log_root``); their
defaults are folders of the repository (not of the working directory), so the scripts behave the same
wherever they are started.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA_ROOT = REPO_ROOT / "dataset"
DEFAULT_TRACKING_ROOT = REPO_ROOT / "metrical-tracker" / "output"
DEFAULT_LOG_ROOT = REPO_ROOT / "logs"

WHITE = (1.0, 1.0, 1.0)
GREEN = (0.0, 1.0, 0.0)


class _HelpFormatter(argparse.HelpFormatter):
    """Shows a flag's default where it says something (not None / False) and the help text has none."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        silent = action.default is None or action.default is False or action.default == argparse.SUPPRESS
        if "default" in text or silent or not action.option_strings:
            return text
        return text + " (default: %(default)s)"


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text}")
    return value


@dataclass
class PathOptions:
    """Where the subject, its tracking, the FLAME files and the outputs live."""

    idname: str
    logname: str
    data_root: Path
    tracking_root: Path
    flame_dir: Path | None
    log_root: Path

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser, *, logname_required: bool = False) -> None:
        g = parser.add_argument_group("paths")
        g.add_argument("--idname", required=True, help="subject name: frames in <data_root>/<idname>/ "
                       "('demo' generates the synthetic demo subject when missing)")
        g.add_argument("--logname", default=None, required=logname_required,
                       help="run name; outputs go to <log_root>/<idname>_<logname>/ "
                            "(default: 'ours' with --ours, else 'baseline')")
        g.add_argument("--data_root", type=Path, default=DEFAULT_DATA_ROOT,
                       help="folder holding <idname>/imgs, alpha, parsing")
        g.add_argument("--tracking_root", type=Path, default=DEFAULT_TRACKING_ROOT,
                       help="folder holding <idname>/checkpoint/NNNNN.frame (metrical-tracker output)")
        g.add_argument("--flame_dir", type=Path, default=None,
                       help="FLAME assets folder (default: the subject's own flame/ when it has one, "
                            "else the repository's flame/)")
        g.add_argument("--log_root", type=Path, default=DEFAULT_LOG_ROOT,
                       help="folder for run outputs")

    @classmethod
    def from_args(cls, ns: argparse.Namespace) -> PathOptions:
        logname = ns.logname or ("ours" if getattr(ns, "ours", False) else "baseline")
        return cls(idname=ns.idname, logname=logname, data_root=Path(ns.data_root),
                   tracking_root=Path(ns.tracking_root),
                   flame_dir=None if ns.flame_dir is None else Path(ns.flame_dir), log_root=Path(ns.log_root))

    @property
    def model_dir(self) -> Path:
        """<log_root>/<idname>_<logname>: checkpoints, logs, frames, metrics of this run."""
        return self.log_root / f"{self.idname}_{self.logname}"


@dataclass
class DataOptions:
    """How frames are paired, split, composited and cached (SPEC section 8)."""

    frame_delta: int
    test_num: int
    eval_num: int
    max_train: int
    background: str  # "white" | "green"
    preload: str  # "auto" | "none" | "cpu" | "device"

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        g = parser.add_argument_group("data")
        g.add_argument("--frame_delta", type=int, default=0,
                       help="image NNNNN pairs with tracking frame NNNNN - frame_delta "
                            "(original FlashAvatar: 1)")
        g.add_argument("--test_num", type=_positive_int, default=500, help="last N frames form the test set")
        g.add_argument("--eval_num", type=_positive_int, default=50,
                       help="last N frames form the eval set used during training")
        g.add_argument("--max_train", type=_positive_int, default=10000, help="cap on training frames")
        bg = g.add_mutually_exclusive_group()
        bg.add_argument("--white_background", action="store_true",
                        help="white background (the default; accepted for compatibility)")
        bg.add_argument("--green_background", action="store_true",
                        help="green (0,1,0) background, the original FlashAvatar's default")
        g.add_argument("--preload", choices=["auto", "none", "cpu", "device"], default="auto",
                       help="cache frames: none (read per use), cpu, device (fastest); auto = device when "
                            "the subject fits in 2 GiB, else cpu when it fits in 8 GiB, else none")

    @classmethod
    def from_args(cls, ns: argparse.Namespace) -> DataOptions:
        return cls(frame_delta=ns.frame_delta, test_num=ns.test_num, eval_num=ns.eval_num,
                   max_train=ns.max_train, background="green" if ns.green_background else "white",
                   preload=ns.preload)

    @property
    def background_rgb(self) -> tuple[float, float, float]:
        return GREEN if self.background == "green" else WHITE


@dataclass
class ModelOptions:
    """Which avatar and its sizes (SPEC sections 4-6); must match a checkpoint being loaded."""

    ours: bool
    latent_dim: int
    hidden_dim: int
    hidden_layers: int
    uv_size: int
    conditional_appearance: bool
    camera_conditioning: bool

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        g = parser.add_argument_group("model")
        g.add_argument("--ours", action="store_true", help="HyperGaussians (default: FlashAvatar baseline)")
        g.add_argument("--latent_dim", type=_positive_int, default=32, help="HyperGaussian latent size")
        g.add_argument("--hidden_dim", type=_positive_int, default=256, help="MLP width")
        g.add_argument("--hidden_layers", type=_positive_int, default=6, help="MLP hidden layers")
        g.add_argument("--uv_size", type=_positive_int, default=128,
                       help="UV grid size (one Gaussian per texel)")
        g.add_argument("--conditional_appearance", action="store_true",
                       help="also predict colour and opacity per frame (HyperGaussians: two more modules; "
                            "baseline: four more MLP outputs)")
        g.add_argument("--camera_conditioning", action="store_true",
                       help="condition the appearance on the view direction (needs --conditional_appearance)")

    @classmethod
    def from_args(cls, ns: argparse.Namespace) -> ModelOptions:
        if ns.camera_conditioning and not ns.conditional_appearance:
            raise SystemExit("--camera_conditioning needs --conditional_appearance")
        return cls(ours=ns.ours, latent_dim=ns.latent_dim, hidden_dim=ns.hidden_dim,
                   hidden_layers=ns.hidden_layers, uv_size=ns.uv_size,
                   conditional_appearance=ns.conditional_appearance,
                   camera_conditioning=ns.camera_conditioning)


@dataclass
class RunOptions:
    """Where computation happens."""

    device: str
    backend: str | None
    cuda_graphs: bool = True

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        g = parser.add_argument_group("run")
        g.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1, ...")
        g.add_argument("--backend", choices=["auto", "torch", "cuda"], default=None,
                       help="rasterizer backend (default: $GAUSSIAN_RENDERER_BACKEND, else auto)")
        g.add_argument("--no_cuda_graphs", action="store_true",
                       help="run the deformation eagerly on CUDA instead of replaying captured CUDA graphs "
                            "(slower; for debugging)")

    @classmethod
    def from_args(cls, ns: argparse.Namespace) -> RunOptions:
        return cls(device=ns.device, backend=ns.backend, cuda_graphs=not ns.no_cuda_graphs)


@dataclass
class TrainOptions:
    """The training schedule and loss weights (SPEC section 9)."""

    iterations: int
    seed: int
    start_checkpoint: Path | None
    lambda_lpips: float
    lpips_start: int
    lambda_opacity_reg: float
    eval_every: int
    ckpt_every: int
    log_every: int
    skip_test: bool
    grid_every: int

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        g = parser.add_argument_group("training")
        g.add_argument("--iterations", type=_positive_int, default=30000, help="training iterations")
        g.add_argument("--seed", type=int, default=0, help="seeds torch (model init) and the frame order")
        g.add_argument("--start_checkpoint", type=Path, default=None,
                       help="resume exactly from ckpt/ckpt<iter>.pth (model, Gaussians, optimisers, RNG)")
        g.add_argument("--lambda_lpips", type=_non_negative_float, default=0.05,
                       help="weight of the LPIPS-VGG term; 0 turns it off (no VGG weights needed)")
        g.add_argument("--lpips_start", type=_non_negative_int, default=15000,
                       help="the perceptual term is used after this iteration")
        g.add_argument("--lambda_opacity_reg", type=_non_negative_float, default=0.0,
                       help="weight of mean((1 - opacity)^2)")
        g.add_argument("--eval_every", type=_non_negative_int, default=1250,
                       help="evaluate the eval split every N iterations (0: only at the end)")
        g.add_argument("--ckpt_every", type=_non_negative_int, default=5000,
                       help="checkpoint every N iterations (0: only at the end)")
        g.add_argument("--log_every", type=_positive_int, default=25,
                       help="read the loss back to the host (bar, tensorboard) every N iterations")
        g.add_argument("--grid_every", type=_non_negative_int, default=500,
                       help="write a (render, gt, error) image grid every N iterations (0: off)")
        g.add_argument("--skip_test", action="store_true", help="no evaluation during or after training")

    @classmethod
    def from_args(cls, ns: argparse.Namespace) -> TrainOptions:
        return cls(iterations=ns.iterations, seed=ns.seed, start_checkpoint=ns.start_checkpoint,
                   lambda_lpips=ns.lambda_lpips, lpips_start=ns.lpips_start,
                   lambda_opacity_reg=ns.lambda_opacity_reg, eval_every=ns.eval_every,
                   ckpt_every=ns.ckpt_every, log_every=ns.log_every, skip_test=ns.skip_test,
                   grid_every=ns.grid_every)

    @property
    def needs_lpips_loss(self) -> bool:
        """The perceptual term will be used: iterations pass lpips_start and its weight is positive."""
        return self.lambda_lpips > 0 and self.iterations > self.lpips_start


@dataclass
class RenderOptions:
    """What ``render.py`` renders and writes (SPEC section 10)."""

    checkpoint: Path | None
    rotate: bool
    cross: str | None
    cross_mode: str  # "absolute" | "relative"
    cross_all: bool
    cross_data_root: Path | None
    cross_tracking_root: Path | None
    uncertainty: bool
    error: bool
    export_ply: bool
    export_ply_frames: bool
    fps: float
    max_frames: int | None
    no_video: bool

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        g = parser.add_argument_group("rendering")
        g.add_argument("--checkpoint", type=Path, default=None,
                       help="checkpoint to render (default: the newest ckpt/ckpt<iter>.pth of the run)")
        g.add_argument("--rotate", action="store_true",
                       help="turn the head about FLAME's y axis, 0..359 degrees over a third of the frames")
        g.add_argument("--cross", default=None, metavar="SRC",
                       help="cross-reenactment: drive the avatar with subject SRC's expressions and cameras")
        g.add_argument("--cross_mode", choices=["absolute", "relative"], default="absolute",
                       help="absolute: SRC's expressions as they are; relative: target neutral + "
                            "(SRC - SRC neutral); a subject's neutral frame is the one with the smallest "
                            "||expression||^2 + ||jaw - rest||^2 (6D)")
        g.add_argument("--cross_all", action="store_true",
                       help="cross-reenact all of SRC's frames, not its test split")
        g.add_argument("--cross_data_root", type=Path, default=None,
                       help="SRC's data root (default --data_root)")
        g.add_argument("--cross_tracking_root", type=Path, default=None,
                       help="SRC's tracking root (default --tracking_root)")
        g.add_argument("--uncertainty", action="store_true",
                       help="colour Gaussians by viridis(sigmoid(2.5 * uncertainty)) (HyperGaussians only)")
        g.add_argument("--error", action="store_true", help="write error maps instead of renders")
        g.add_argument("--export_ply", action="store_true", help="write the canonical-pose Gaussians as PLY")
        g.add_argument("--export_ply_frames", action="store_true", help="write one PLY per rendered frame")
        g.add_argument("--fps", type=float, default=25.0, help="video frame rate")
        g.add_argument("--max_frames", type=_positive_int, default=None, help="render at most N frames")
        g.add_argument("--no_video", action="store_true", help="do not write the mp4")

    @classmethod
    def from_args(cls, ns: argparse.Namespace) -> RenderOptions:
        return cls(checkpoint=ns.checkpoint, rotate=ns.rotate, cross=ns.cross, cross_mode=ns.cross_mode,
                   cross_all=ns.cross_all, cross_data_root=ns.cross_data_root,
                   cross_tracking_root=ns.cross_tracking_root, uncertainty=ns.uncertainty, error=ns.error,
                   export_ply=ns.export_ply, export_ply_frames=ns.export_ply_frames, fps=ns.fps,
                   max_frames=ns.max_frames, no_video=ns.no_video)

    @property
    def frames_dirname(self) -> str:
        """frames[_rotate][_uncertainty][_error][_cross] (SPEC section 10)."""
        name = "frames"
        for flag, suffix in ((self.rotate, "_rotate"), (self.uncertainty, "_uncertainty"),
                             (self.error, "_error"), (self.cross is not None, "_cross")):
            if flag:
                name += suffix
        return name


@dataclass
class TrainConfig:
    paths: PathOptions
    data: DataOptions
    model: ModelOptions
    train: TrainOptions
    run: RunOptions


@dataclass
class RenderConfig:
    paths: PathOptions
    data: DataOptions
    model: ModelOptions
    render: RenderOptions
    run: RunOptions


@dataclass
class MetricsConfig:
    model_dirs: list[Path]
    device: str
    no_lpips: bool


def build_parser(script: str) -> argparse.ArgumentParser:
    """The argument parser of ``train``, ``render`` or ``metrics``."""
    if script == "train":
        p = argparse.ArgumentParser(
            formatter_class=_HelpFormatter,
            description="Train a FlashAvatar (baseline) or HyperGaussians (--ours) avatar.")
        for group in (PathOptions, DataOptions, ModelOptions, TrainOptions, RunOptions):
            group.add_arguments(p)
    elif script == "render":
        p = argparse.ArgumentParser(
            formatter_class=_HelpFormatter,
            description="Render a trained avatar: test split, rotation, cross-reenactment.")
        for group in (PathOptions, DataOptions, ModelOptions, RenderOptions, RunOptions):
            group.add_arguments(p)
    elif script == "metrics":
        p = argparse.ArgumentParser(formatter_class=_HelpFormatter,
                                    description="Masked PSNR / SSIM / LPIPS of rendered frames.")
        p.add_argument("-m", "--model_paths", nargs="+", required=True, type=Path, metavar="DIR",
                       help="run folders (holding frames/) or frames folders (holding renders/ gt/ mask/)")
        p.add_argument("--device", default="auto", help="device for LPIPS")
        p.add_argument("--no_lpips", action="store_true", help="skip LPIPS (reported as null)")
    else:
        raise ValueError(f"build_parser: unknown script {script!r}")
    return p


def parse_train_args(argv: list[str] | None = None) -> TrainConfig:
    ns = build_parser("train").parse_args(argv)
    return TrainConfig(PathOptions.from_args(ns), DataOptions.from_args(ns), ModelOptions.from_args(ns),
                       TrainOptions.from_args(ns), RunOptions.from_args(ns))


def parse_render_args(argv: list[str] | None = None) -> RenderConfig:
    ns = build_parser("render").parse_args(argv)
    cfg = RenderConfig(PathOptions.from_args(ns), DataOptions.from_args(ns), ModelOptions.from_args(ns),
                       RenderOptions.from_args(ns), RunOptions.from_args(ns))
    if cfg.render.uncertainty and not cfg.model.ours:
        raise SystemExit("--uncertainty needs a HyperGaussians model (--ours): "
                         "the baseline has no uncertainty")
    if cfg.render.uncertainty and cfg.render.error:
        raise SystemExit("--uncertainty and --error are exclusive: choose one visualisation")
    return cfg


def parse_metrics_args(argv: list[str] | None = None) -> MetricsConfig:
    ns = build_parser("metrics").parse_args(argv)
    return MetricsConfig(model_dirs=list(ns.model_paths), device=ns.device, no_lpips=ns.no_lpips)
