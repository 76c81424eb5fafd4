"""Typed option groups shared by ``train.py``, ``render.py`` and ``metrics.py``; one parser builder.

Each flag is declared once, as a dataclass field made by :func:`option` (default, help, parser type or
action in the field's metadata); :func:`add_group` turns a group's fields into an argument group and
:func:`read_group` reads the parsed namespace back into the typed group. Rules that span groups are
checked in one place, :func:`_validate`, which reports through ``parser.error``. The model group,
:class:`ModelOptions`, is the avatar's configuration itself (recorded in checkpoints). Defaults follow
docs/maths.md sections 1, 8, 9, 10. Every
path root is a flag (``--data_root``, ``--tracking_root``, ``--flame_dir``, ``--log_root``); their
defaults are folders of the repository (not of the working directory), so the scripts behave the same
wherever they are started.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA_ROOT = REPO_ROOT / "dataset"
DEFAULT_TRACKING_ROOT = REPO_ROOT / "metrical-tracker" / "output"
DEFAULT_LOG_ROOT = REPO_ROOT / "logs"



class _HelpFormatter(argparse.HelpFormatter):
    """Shows a flag's default where it says something (not None / False) and the help text has none."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        silent = (action.default is None or action.default is False or action.default == argparse.SUPPRESS
                  or isinstance(action, argparse._StoreConstAction))  # switches: the flag says it all
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


def _sh_degree(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 3:
        raise argparse.ArgumentTypeError(f"expected an SH degree 0-3, got {text}")
    return value


def _share(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a share in [0, 1], got {text}")
    return value


def _decay(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a decay in [0, 1), got {text}")
    return value


def option(default: Any = MISSING, *, help: str, flag: str | tuple[str, ...] | None = None, type: Any = None,
           choices: list[str] | None = None, action: str | None = None, metavar: str | None = None,
           required: bool = False, switches: dict[str, tuple[str, str]] | None = None) -> Any:
    """A dataclass field that is also a command-line flag: ``--<field name>`` unless ``flag`` names
    another (or several), or, with ``switches`` ({flag: (value, help)}), mutually exclusive flags that
    each set the field to their value. ``bool`` fields default to ``store_true``."""
    meta = {"help": help, "flag": flag, "type": type, "choices": choices, "action": action,
            "metavar": metavar, "required": required, "switches": switches}
    return field(default=default, metadata={"cli": meta})


def add_group(parser: argparse.ArgumentParser, group: type, title: str) -> None:
    """Declare the flags of dataclass ``group`` (its :func:`option` fields) as an argument group."""
    g = parser.add_argument_group(title)
    for f in fields(group):
        meta = f.metadata.get("cli")
        if meta is None:
            continue  # not a flag (fixed by the code, e.g. the SH degree)
        if meta["switches"]:
            exclusive = g.add_mutually_exclusive_group()
            for flag, (value, help_text) in meta["switches"].items():
                exclusive.add_argument(flag, dest=f.name, action="store_const", const=value, help=help_text)
            parser.set_defaults(**{f.name: f.default})
            continue
        kwargs: dict[str, Any] = {"help": meta["help"], "dest": f.name}
        if meta["action"] is not None:
            kwargs["action"] = meta["action"]
        elif isinstance(f.default, bool):
            kwargs["action"] = "store_true"
        else:
            kwargs.update({k: meta[k] for k in ("type", "choices", "metavar") if meta[k] is not None})
        if meta["required"]:
            kwargs["required"] = True
        else:
            kwargs["default"] = f.default
        flags = meta["flag"] or f"--{f.name}"
        g.add_argument(*((flags,) if isinstance(flags, str) else flags), **kwargs)


def read_group(group: type, ns: argparse.Namespace) -> Any:
    """The typed ``group`` from a parsed namespace (fields without a flag keep their defaults)."""
    return group(**{f.name: getattr(ns, f.name) for f in fields(group) if "cli" in f.metadata})


@dataclass
class PathOptions:
    """Where the subject, its tracking, the FLAME files and the outputs live."""

    idname: str | None = option(None, help="subject name: frames in <data_root>/<idname>/ ('demo' "
                                "generates the synthetic demo subject when missing); required by train.py")
    logname: str | None = option(None, help="run name; outputs go to <log_root>/<idname>_<logname>/ "
                                 "(default: 'ours' with --ours, else 'baseline')")
    data_root: Path = option(DEFAULT_DATA_ROOT, type=Path,
                             help="folder holding <idname>/imgs, alpha, parsing")
    tracking_root: Path = option(DEFAULT_TRACKING_ROOT, type=Path,
                                 help="folder holding <idname>/checkpoint/NNNNN.frame (tracker output)")
    flame_dir: Path | None = option(None, type=Path, help="FLAME assets folder (default: the subject's own "
                                    "flame/ when it has one, else the repository's flame/)")
    log_root: Path = option(DEFAULT_LOG_ROOT, type=Path, help="folder for run outputs")
    run_dir: Path | None = None  # render.py -m: the run folder itself (not a flag of this group)

    @property
    def model_dir(self) -> Path:
        """<log_root>/<idname>_<logname> (or the folder given by -m): checkpoints, logs, frames, metrics."""
        return self.run_dir if self.run_dir is not None else self.log_root / f"{self.idname}_{self.logname}"


@dataclass
class DataOptions:
    """How frames are paired, split, composited and cached (docs/maths.md section 8)."""

    frame_delta: int = option(0, type=int, help="image NNNNN pairs with tracking frame NNNNN - frame_delta "
                              "(original FlashAvatar: 1)")
    test_num: int = option(500, type=_positive_int, help="last N frames form the test set")
    eval_num: int = option(50, type=_positive_int,
                           help="last N frames form the eval set used during training")
    max_train: int = option(10000, type=_positive_int, help="cap on training frames")
    allow_missing: bool = option(False, help="use only the frames that have both an image and a tracked "
                                             "frame (default: such gaps are an error that names them)")
    background: str = option("white", help="background colour behind the matted head", switches={
        "--white_background": ("white", "white background (the default; accepted for compatibility)"),
        "--green_background": ("green", "green (0,1,0) background, the original FlashAvatar's default")})
    preload: str = option("auto", choices=["auto", "none", "cpu", "device"],
                          help="cache frames: none (read per use), cpu, device (fastest); auto = device "
                               "when the subject fits in a quarter of the GPU's memory (at most 6 GiB; "
                               "2 GiB on a CPU), else cpu when it fits in 8 GiB, else none")


@dataclass(frozen=True)
class ModelOptions:
    """Which avatar and its sizes (docs/maths.md sections 4-6): the avatar's configuration, recorded in
    checkpoints; a checkpoint loads only into an avatar with the same values."""

    ours: bool = option(False, help="HyperGaussians (default: FlashAvatar baseline)")
    latent_dim: int = option(32, type=_positive_int, help="HyperGaussian latent size")
    hidden_dim: int = option(256, type=_positive_int, help="MLP width")
    hidden_layers: int = option(6, type=_positive_int, help="MLP hidden layers")
    uv_size: int = option(128, type=_positive_int, help="UV grid size (one Gaussian per texel)")
    conditional_appearance: bool = option(
        False, help="also predict colour and opacity per frame (HyperGaussians: two more modules; "
                    "baseline: four more MLP outputs)")
    camera_conditioning: bool = option(
        False, help="condition the appearance on the view direction (needs --conditional_appearance)")
    max_sh_degree: int = option(3, type=_sh_degree,
                                help="highest spherical-harmonics degree of the colours (0-3; 0: one colour "
                                     "per Gaussian, no view dependence)")

    @property
    def method(self) -> str:
        """"ours" (HyperGaussians) or "baseline" (FlashAvatar)."""
        return "ours" if self.ours else "baseline"

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def is_flag(name: str) -> bool:
        """Whether field ``name`` is a command-line flag (``--name``)."""
        return any(f.name == name and "cli" in f.metadata for f in fields(ModelOptions))


@dataclass
class RunOptions:
    """Where computation happens."""

    device: str = option("auto", help="auto (CUDA when available), cpu, cuda, cuda:1, ...")
    backend: str | None = option(None, choices=["auto", "torch", "cuda"],
                                 help="rasterizer backend (default: $GAUSSIAN_RENDERER_BACKEND, else auto)")
    precision: str = option("tf32", choices=["fp32", "tf32", "bf16"],
                            help="GPU arithmetic (utils/precision.py): fp32 plain; tf32 tensor-core matrix "
                                 "products and convolutions; bf16 also runs LPIPS' VGG trunk in bfloat16 "
                                 "(its image gradient is only ~0.99 cosine-close to fp32's; "
                                 "utils/precision.py)")
    cuda_graphs: bool = option(True, flag="--no_cuda_graphs", action="store_false",
                               help="run the deformation (and in training the LPIPS term) eagerly on CUDA "
                                    "instead of replaying captured CUDA graphs (slower; for debugging)")
    fused_kernels: bool = option(True, flag="--no_fused_kernels", action="store_false",
                                 help="run the plain PyTorch paths instead of our fused GPU kernels "
                                      "(HyperGaussians' conditional mean, the one-launch Adam, LPIPS' layer "
                                      "distance, the MLP's GEMM + ReLU epilogue; utils/fast_paths.py): "
                                      "slower, the same results")
    graph_scope: str = option("step", choices=["step", "parts"],
                              help="what one CUDA graph holds (with CUDA graphs on and the CUDA rasterizer): "
                                   "step: a whole training iteration (loss, backward, Adam) and, in "
                                   "evaluation, a whole frame (deformation and rasterizer); parts: the "
                                   "deformation and the LPIPS term only, the rest launched op by op")


@dataclass
class TrainOptions:
    """The training schedule and loss weights (docs/maths.md section 9)."""

    iterations: int = option(30000, type=_positive_int, help="training iterations")
    seed: int = option(0, type=int, help="seeds torch (model init) and the frame order; our random stream "
                       "differs from the original's, so seed N here is not the original's seed N")
    original_init: bool = option(False, help="baseline: keep the original's random start of the offset "
                                 "head (PyTorch's default init shifts the whole head by several cm, and "
                                 "results vary by seed) instead of starting at zero offset (the default)")
    start_checkpoint: Path | None = option(None, type=Path, help="resume exactly from ckpt/ckpt<iter>.pth "
                                           "(model, Gaussians, optimisers, RNG)")
    resume: bool = option(False, help="continue the run in the output folder from its newest checkpoint")
    overwrite: bool = option(False, help="start over in an output folder that holds an earlier run's "
                                         "checkpoints (they, its grids and its log are deleted)")
    lambda_lpips: float = option(0.05, type=_non_negative_float,
                                 help="weight of the LPIPS-VGG term; 0 turns it off (no VGG weights needed)")
    lpips_start: int = option(15000, type=_non_negative_int,
                              help="the perceptual term is used after this iteration")
    lambda_opacity_reg: float = option(0.0, type=_non_negative_float, help="weight of mean((1 - opacity)^2)")
    lambda_offset: float = option(0.0, type=_non_negative_float,
                                  help="weight of mean ||position - mesh point||^2 (m^2): keeps Gaussians "
                                       "near the surface for side views (bench/NOTES.md measures it)")
    lambda_normal_offset: float | None = option(
        None, type=_non_negative_float,
        help="weight of mean ((position - mesh point) . n)^2 (m^2), n the triangle's normal: the "
             "distance from the surface only, sliding along it is free (default: 1000 for the baseline, "
             "where it removes the seed lottery and the ghost mouth of side views, 0 for --ours, where it "
             "costs quality; bench/NOTES.md)")
    lambda_thickness: float = option(0.0, type=_non_negative_float,
                                     help="weight of the mean share of each Gaussian's variance along its "
                                          "triangle's normal (flat Gaussians in the surface; against "
                                          "streaks in side views)")
    random_background: float = option(1.0, type=_share, metavar="SHARE",
                                      help="share of training steps (0-1) whose frame is composited over a "
                                           "random background colour and rendered over the same colour; "
                                           "evaluation stays on the subject's background. The head's edges "
                                           "cannot borrow the background's colour, which side views show "
                                           "(+1 to +4 dB there, frontal level or better: bench/NOTES.md). "
                                           "0: the original's white background only")
    ema_decay: float = option(0.0, type=_decay,
                              help="evaluate, checkpoint for rendering and export an exponential moving "
                                   "average of the parameters with this decay (e.g. 0.999; 0: off, the last "
                                   "iterate as in the original); training itself is unchanged")
    eval_every: int = option(1250, type=_non_negative_int,
                             help="evaluate the eval split every N iterations (0: only at the end)")
    ckpt_every: int = option(5000, type=_non_negative_int,
                             help="checkpoint every N iterations (0: only at the end)")
    log_every: int = option(25, type=_positive_int,
                            help="read the loss back to the host (bar, tensorboard) every N iterations")
    skip_test: bool = option(False, help="no evaluation during or after training")
    grid_every: int = option(500, type=_non_negative_int,
                             help="write a (render, gt, error) image grid every N iterations (0: off)")
    quiet: bool = option(False, help="no progress bar (scripted runs; the log and messages stay)")

    @property
    def uses_surface(self) -> bool:
        """A surface prior is on: each step needs the posed mesh's base points and normals."""
        return bool(self.lambda_offset or self.lambda_normal_offset or self.lambda_thickness)

    @property
    def needs_lpips_loss(self) -> bool:
        """The perceptual term will be used: iterations pass lpips_start and its weight is positive."""
        return self.lambda_lpips > 0 and self.iterations > self.lpips_start


@dataclass
class RenderOptions:
    """What ``render.py`` renders and writes (docs/maths.md section 10)."""

    model_path: Path | None = option(None, flag=("-m", "--model_path"), type=Path, metavar="RUN",
                                     help="the run folder to render (e.g. logs/demo_baseline), instead of "
                                          "--idname/--logname/--log_root")
    checkpoint: Path | None = option(None, type=Path, help="checkpoint to render (default: the newest "
                                     "ckpt/ckpt<iter>.pth of the run)")
    rotate: bool = option(False, help="turn the head about FLAME's y axis, a full turn over --rotate_frames "
                                      "frames (the test sequence looped, or --rotate_hold)")
    rotate_frames: int = option(120, type=_positive_int, help="length of the --rotate turn in frames")
    rotate_hold: bool = option(False, help="--rotate over the first test frame's expression and camera "
                                           "instead of the test sequence looped")
    cross: str | None = option(None, metavar="SRC", help="cross-reenactment: drive the avatar with subject "
                                                         "SRC's expressions and cameras")
    cross_mode: str = option("absolute", choices=["absolute", "relative"],
                             help="absolute: SRC's expressions as they are; relative: target neutral + "
                                  "(SRC - SRC neutral); a subject's neutral frame is the one with the "
                                  "smallest ||expression||^2 + ||jaw - rest||^2 (6D)")
    cross_all: bool = option(False, help="cross-reenact all of SRC's frames, not its test split")
    cross_data_root: Path | None = option(None, type=Path, help="SRC's data root (default --data_root)")
    cross_tracking_root: Path | None = option(None, type=Path,
                                              help="SRC's tracking root (default --tracking_root)")
    novel_views: bool = option(False, help="render the subject's novel-view split (synthetic subjects made "
                                           "with --novel_views) into frames_novel_views/<view>/ with ground "
                                           "truth; metrics.py scores each view")
    uncertainty: bool = option(False, help="colour Gaussians by viridis(sigmoid(2.5 * uncertainty)) "
                                           "(HyperGaussians only)")
    error: bool = option(False, help="write error maps instead of renders")
    export_ply: bool = option(False, help="write the canonical-pose Gaussians as PLY to "
                                          "<run>/ply/canonical.ply; on its own it renders nothing (add "
                                          "--render for the test split)")
    render: bool = option(False, help="render the test split too when --export_ply is given")
    export_ply_frames: bool = option(False, help="write one PLY per rendered frame")
    fps: float = option(25.0, type=float, help="video frame rate")
    max_frames: int | None = option(None, type=_positive_int, help="render at most N frames")
    no_video: bool = option(False, help="do not write the mp4")

    @property
    def renders_frames(self) -> bool:
        """Whether anything is rendered: always, except for --export_ply on its own."""
        visual = (self.rotate, self.uncertainty, self.error, self.cross is not None, self.export_ply_frames,
                  self.novel_views)
        return not self.export_ply or self.render or any(visual)

    @property
    def frames_dirname(self) -> str:
        """The output folder of this mode and its options, never shared by two modes (docs/maths.md
        section 10): frames[_novel_views][_rotate[_hold]][_uncertainty][_error][_cross_<SRC>[_relative]
        [_all]]."""
        name = "frames"
        for flag, suffix in ((self.novel_views, "_novel_views"), (self.rotate, "_rotate"),
                             (self.rotate and self.rotate_hold, "_hold"),
                             (self.uncertainty, "_uncertainty"), (self.error, "_error"),
                             (self.cross is not None, f"_cross_{self.cross}"),
                             (self.cross is not None and self.cross_mode == "relative", "_relative"),
                             (self.cross is not None and self.cross_all, "_all")):
            if flag:
                name += suffix
        return name

    @property
    def has_ground_truth(self) -> bool:
        """Whether the renders are comparable with the subject's frames: only the plain test split (turned
        views, another subject's motion and visualisations have no ground truth)."""
        return not (self.rotate or self.uncertainty or self.error or self.cross is not None)


@dataclass
class ViewOptions:
    """What ``view.py`` shows and where it listens."""

    model_path: Path | None = option(None, flag=("-m", "--model_path"), type=Path, metavar="RUN",
                                     help="the run folder to view (e.g. logs/demo_ours), instead of "
                                          "--idname/--logname/--log_root")
    checkpoint: Path | None = option(None, type=Path,
                                     help="checkpoint to view (default: the newest of the run)")
    compare: Path | None = option(None, type=Path, metavar="RUN",
                                  help="a second run folder (same subject) rendered beside the first, one "
                                       "shared camera")
    cross: str | None = option(None, metavar="SRC",
                               help="play subject SRC's tracked sequence (its expressions and cameras) "
                                    "instead of the subject's own")
    cross_data_root: Path | None = option(None, type=Path, help="SRC's data root (default --data_root)")
    cross_tracking_root: Path | None = option(None, type=Path,
                                              help="SRC's tracking root (default --tracking_root)")
    host: str = option("127.0.0.1", help="address to listen on (0.0.0.0: reachable from other machines)")
    port: int = option(8080, type=_positive_int, help="port of the web page")
    max_size: int = option(1024, type=_positive_int,
                           help="longest side of a rendered view in pixels (larger browser windows are "
                                "rendered at this size and scaled by the browser)")
    fps: float = option(25.0, type=float, help="playback frame rate at speed 1")


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
    record: Path | None = None  # the run's train_log.json whose options filled the flags not given
    adopted: dict[str, Any] = field(default_factory=dict)  # those options: flag name -> recorded value


@dataclass
class ViewConfig:
    paths: PathOptions
    data: DataOptions
    model: ModelOptions
    view: ViewOptions
    run: RunOptions
    record: Path | None = None  # as RenderConfig
    adopted: dict[str, Any] = field(default_factory=dict)


@dataclass
class MetricsConfig:
    model_dirs: list[Path]
    device: str
    no_lpips: bool


# script -> (description, config class, its groups in order)
_SCRIPTS: dict[str, tuple[str, type, tuple[tuple[str, type], ...]]] = {
    "train": ("Train a FlashAvatar (baseline) or HyperGaussians (--ours) avatar.", TrainConfig,
              (("paths", PathOptions), ("data", DataOptions), ("model", ModelOptions),
               ("train", TrainOptions), ("run", RunOptions))),
    "render": ("Render a trained avatar: test split, rotation, cross-reenactment.", RenderConfig,
               (("paths", PathOptions), ("data", DataOptions), ("model", ModelOptions),
                ("render", RenderOptions), ("run", RunOptions))),
    "view": ("Look at a trained avatar in the browser: orbit, play its sequence, edit the expression.",
             ViewConfig, (("paths", PathOptions), ("data", DataOptions), ("model", ModelOptions),
                          ("view", ViewOptions), ("run", RunOptions))),
}


def build_parser(script: str) -> argparse.ArgumentParser:
    """The argument parser of ``train``, ``render`` or ``metrics``."""
    if script == "metrics":
        p = argparse.ArgumentParser(formatter_class=_HelpFormatter,
                                    description="Masked PSNR / SSIM / LPIPS of rendered frames.")
        p.add_argument("-m", "--model_paths", nargs="+", required=True, type=Path, metavar="DIR",
                       help="run folders (holding frames/) or frames folders (holding renders/ gt/ mask/)")
        p.add_argument("--device", default="auto", help="device for LPIPS")
        p.add_argument("--no_lpips", action="store_true", help="skip LPIPS (reported as null)")
        return p
    if script not in _SCRIPTS:
        raise ValueError(f"build_parser: unknown script {script!r}")
    description, _, groups = _SCRIPTS[script]
    p = argparse.ArgumentParser(formatter_class=_HelpFormatter, description=description)
    for title, group in groups:
        add_group(p, group, title)
    return p


RUN_RECORD = "train_log.json"
# what render.py takes from the run's record when the flag is not given: where the data is, how it is
# split and composited, and the model (the device, backend and render options stay this call's own)
_RECORDED_GROUPS: tuple[tuple[str, type, tuple[str, ...] | None], ...] = (
    ("paths", PathOptions, ("data_root", "tracking_root", "flame_dir")),
    ("data", DataOptions, None), ("model", ModelOptions, None))


def _validate(parser: argparse.ArgumentParser, cfg: TrainConfig | RenderConfig, given: set[str]) -> None:
    """The rules that span flags or groups, in one place; a broken one ends in ``parser.error``."""
    if cfg.paths.idname is None and cfg.paths.run_dir is None:
        parser.error("the subject is needed: --idname ID" + (" (or -m RUN_FOLDER)" if isinstance(
            cfg, (RenderConfig, ViewConfig)) else ""))
    if cfg.model.camera_conditioning and not cfg.model.conditional_appearance:
        parser.error("--camera_conditioning needs --conditional_appearance")
    if cfg.data.eval_num > cfg.data.test_num:
        if "eval_num" in given:
            parser.error(f"--eval_num {cfg.data.eval_num} is larger than --test_num {cfg.data.test_num}: "
                         "the eval frames are the last of the test frames; lower --eval_num or raise "
                         "--test_num")
        print(f"[options] --eval_num (default {cfg.data.eval_num}) lowered to --test_num "
              f"{cfg.data.test_num}: the eval frames are the last of the test frames", file=sys.stderr)
        cfg.data.eval_num = cfg.data.test_num
    if isinstance(cfg, TrainConfig):
        t = cfg.train
        if sum([t.resume, t.overwrite, t.start_checkpoint is not None]) > 1:
            parser.error("--resume, --overwrite and --start_checkpoint exclude each other: continue the run "
                         "(--resume or --start_checkpoint) or start over (--overwrite)")
    if isinstance(cfg, RenderConfig):
        if cfg.render.uncertainty and not cfg.model.ours:
            parser.error("--uncertainty needs a HyperGaussians model (--ours): the baseline has no "
                         "uncertainty")
        if cfg.render.uncertainty and cfg.render.error:
            parser.error("--uncertainty and --error are exclusive: choose one visualisation")
        r = cfg.render
        if r.novel_views and (r.rotate or r.cross or r.uncertainty or r.error or r.export_ply_frames):
            parser.error("--novel_views renders the subject's novel-view split with ground truth: use it "
                         "without --rotate/--cross/--uncertainty/--error/--export_ply_frames")


def _given_flags(script: str, argv: list[str] | None) -> set[str]:
    """The destinations of the flags on the command line (a parse in which nothing has a default)."""
    probe = build_parser(script)
    for action in probe._actions:
        action.default = argparse.SUPPRESS
        action.required = False
    probe._defaults.clear()
    return set(vars(probe.parse_args(argv)))


def read_run_record(run_dir: Path) -> dict | None:
    """The options train.py recorded in ``run_dir/train_log.json`` ({group: {field: value}}); None when
    the folder has no record. A record that cannot be read is an error (``ValueError``) naming the file."""
    path = Path(run_dir) / RUN_RECORD
    if not path.is_file():
        return None
    try:
        options = json.loads(path.read_text())["config"]["options"]
        if not all(isinstance(options[g], dict) for g, _, _ in _RECORDED_GROUPS):
            raise TypeError("an option group is not a mapping")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path} cannot be read as train.py's record ({type(exc).__name__}: {exc}); "
                         "pass the model and data flags yourself") from exc
    return options


def _adopt_recorded(parser: argparse.ArgumentParser, ns: argparse.Namespace, given: set[str]) -> tuple[
        Path | None, dict[str, Any]]:
    """Fill every recorded data, model and path flag the command line did not give from the run's
    record; returns the record's path and what was taken. ``-m RUN`` names the run folder itself."""
    run_dir = ns.model_path
    if run_dir is None:
        run_dir = ns.log_root / f"{ns.idname}_{ns.logname}"
    try:
        record = read_run_record(run_dir)
    except ValueError as exc:
        parser.error(str(exc))
    if record is None:
        if ns.model_path is not None:
            parser.error(f"-m {ns.model_path}: no {RUN_RECORD} there, so it is not a train.py run folder; "
                         "pass --idname/--logname/--log_root and the model flags instead")
        return None, {}
    adopted: dict[str, Any] = {}
    if ns.model_path is not None and "idname" not in given:
        ns.idname = record["paths"].get("idname")
    for group_name, group, names in _RECORDED_GROUPS:
        for f in fields(group):
            if "cli" not in f.metadata or (names is not None and f.name not in names) or f.name in given \
                    or f.name not in record[group_name]:
                continue
            value = record[group_name][f.name]
            if value is not None and f.metadata["cli"]["type"] is Path:
                value = Path(value)
            if value != getattr(ns, f.name):
                adopted[f.name] = value
            setattr(ns, f.name, value)
    return run_dir / RUN_RECORD, adopted


def _parse(script: str, argv: list[str] | None) -> Any:
    parser = build_parser(script)
    ns = parser.parse_args(argv)
    if ns.logname is None:
        ns.logname = "ours" if ns.ours else "baseline"
    record, adopted = None, {}
    given = _given_flags(script, argv)
    if script in ("render", "view") and (ns.idname is not None or ns.model_path is not None):
        record, adopted = _adopt_recorded(parser, ns, given)
    _, config, groups = _SCRIPTS[script]
    cfg = config(**{title: read_group(group, ns) for title, group in groups})
    if script == "train":
        _resolve_method_defaults(cfg)
    if script in ("render", "view"):
        cfg.paths.run_dir = ns.model_path
        cfg.record, cfg.adopted = record, adopted
    _validate(parser, cfg, given)
    return cfg


# Training options whose default depends on the method ("baseline" / "ours"): (field, {method: value}).
# The normal-offset prior: bench/NOTES.md, "Session 9" (full size, seeds 0-3: the baseline 34.3 +- 0.8 dB
# -> 35.3 +- 0.5 dB; HyperGaussians lose quality with it at any weight tried).
METHOD_DEFAULTS: tuple[tuple[str, dict[str, float]], ...] = (
    ("lambda_normal_offset", {"baseline": 1000.0, "ours": 0.0}),
)


def _resolve_method_defaults(cfg: TrainConfig) -> None:
    """Fill the training options left at None with their method's default (METHOD_DEFAULTS)."""
    for name, by_method in METHOD_DEFAULTS:
        if getattr(cfg.train, name) is None:
            setattr(cfg.train, name, by_method[cfg.model.method])


def adopted_summary(script: str, cfg: RenderConfig | ViewConfig) -> str | None:
    """The line render.py / view.py print about the options they took from the run's record, or None."""
    if cfg.record is None:
        return None
    taken = " ".join(f"{k}={v}" for k, v in cfg.adopted.items()) or "the same as given"
    return f"[{script}] options from {cfg.record}: {taken}"


def parse_train_args(argv: list[str] | None = None) -> TrainConfig:
    return _parse("train", argv)


def parse_render_args(argv: list[str] | None = None) -> RenderConfig:
    return _parse("render", argv)


def parse_view_args(argv: list[str] | None = None) -> ViewConfig:
    return _parse("view", argv)


def parse_metrics_args(argv: list[str] | None = None) -> MetricsConfig:
    ns = build_parser("metrics").parse_args(argv)
    return MetricsConfig(model_dirs=list(ns.model_paths), device=ns.device, no_lpips=ns.no_lpips)
