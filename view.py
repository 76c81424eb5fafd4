"""Look at a trained avatar in the browser (viser): orbit it, play its sequence, edit its expression.

    python view.py -m logs/nf_01_ours [--checkpoint ...] [--compare logs/nf_01_baseline] [--cross SRC]
                   [--port 8080] [--host 0.0.0.0]

Prints the page's address and serves until Ctrl-C. The run's recorded options (train_log.json) fill the
model and data flags, as for render.py. On a GPU the avatar renders through the CUDA rasterizer; on a CPU
through the PyTorch one (a few frames a second). Needs the ``view`` extra (viser): ``bash install.sh``
installs it.
"""

from __future__ import annotations

import sys
import time

from utils.options import adopted_summary, parse_view_args


def main(argv: list[str] | None = None) -> int:
    cfg = parse_view_args(argv)  # --help answers here, before torch is imported
    from utils.errors import InputError, guarded

    summary = adopted_summary("view", cfg)
    if summary is not None:
        print(summary)

    def body() -> int:
        try:
            import viser  # noqa: F401
        except ImportError as exc:
            raise InputError(f"view.py needs viser ({exc}): pip install -e '.[view]' (bash install.sh "
                             "installs it)") from exc
        from scene.viewer import ViewerModel
        from scene.viewer_app import ViewerApp

        model = ViewerModel(cfg)
        app = ViewerApp(model, host=cfg.view.host, port=cfg.view.port)
        print(f"[view] {model.subject.idname}: {', '.join(model.labels)}, {model.n_frames} frames on "
              f"{model.device}; open {app.url} (Ctrl-C stops)", flush=True)
        try:
            while True:
                time.sleep(1.0)
        except KeyboardInterrupt:
            print("\n[view] stopped")
        finally:
            app.close()
        return 0

    return guarded("view.py", body)


if __name__ == "__main__":
    sys.exit(main())
