"""Render a trained avatar (docs/maths.md section 10): the test split, a turntable, cross-reenactment.

    python render.py -m logs/nf_01_ours [--checkpoint logs/nf_01_ours/ckpt/ckpt30000.pth]
                     [--rotate [--rotate_frames 120] [--rotate_hold]] [--cross SRC [--cross_mode relative]
                     [--cross_all]] [--uncertainty] [--error] [--export_ply [--render]] [--export_ply_frames]

Each mode writes its own folder ``<log_root>/<idname>_<logname>/frames[_rotate[_hold]][_uncertainty]
[_error][_cross_<SRC>[_relative][_all]]/`` with ``renders/NNNNN.png`` (NNNNN = 0-based index in the
rendered sequence), ``frame_map.json`` (mode, options, checkpoint; index -> source subject and frame,
turn angle) and ``renders.mp4``; only the plain test split (``frames/``) has ground truth, ``gt/`` and
``mask/``. The folder is rendered aside and swapped in when complete, so it never mixes two runs.
``--export_ply`` writes ``ply/canonical.ply`` in the run folder (zero expression, jaw and eyes at rest)
and on its own renders nothing; ``--export_ply_frames`` writes one ``ply/NNNNN.ply`` per rendered frame.

The run's recorded options (``train_log.json``: model, split, data roots) fill every such flag not given
(``-m RUN`` or ``--idname/--logname/--log_root`` find the run); ``--help`` answers before torch loads.

Cross-reenactment drives the avatar with SRC's tracked expressions and SRC's cameras (intrinsics
included). ``--cross_mode relative`` uses target neutral + (SRC frame - SRC neutral): expression and
eyelids add, jaw and eye rotations compose (R = R_src R_src_neutral^T R_target_neutral). The neutral
frame of a subject is the tracked frame with the smallest ||expression||^2 + ||jaw - identity||^2 (6D).
"""

from __future__ import annotations

import sys

from utils.options import adopted_summary, parse_render_args


def main(argv: list[str] | None = None) -> int:
    cfg = parse_render_args(argv)  # --help answers here, before torch is imported
    from utils.errors import guarded

    summary = adopted_summary("render", cfg)
    if summary is not None:
        print(summary)

    def body() -> int:
        from scene.rendering import Renderer, RenderSetupError

        renderer = Renderer(cfg)
        if not renderer.indices and renderer.cfg.render.renders_frames:
            raise RenderSetupError("no frames to render (empty test split?)")
        renderer.run()
        return 0

    return guarded("render.py", body)


if __name__ == "__main__":
    sys.exit(main())
