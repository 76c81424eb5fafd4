"""Train a FlashAvatar (baseline) or HyperGaussians (``--ours``) head avatar (docs/maths.md section 9).

    python train.py --idname nf_01 --logname baseline
    python train.py --idname nf_01 --logname ours --ours

Demo on a CPU (generates the synthetic subject on first use; ~2-5 min on 2 cores, PSNR ~21 -> ~31 dB):

    python train.py --idname demo --test_num 8 --eval_num 8 --uv_size 64 --hidden_dim 128 --hidden_layers 4 \
                    --iterations 2500 --eval_every 500 --device cpu

Outputs under ``<log_root>/<idname>_<logname>/`` (see :mod:`scene.trainer`, which holds the loop).
"""

from __future__ import annotations

from utils.options import parse_train_args


def main(argv: list[str] | None = None) -> int:
    cfg = parse_train_args(argv)  # --help answers here, before torch is imported
    from utils.errors import guarded

    def body() -> int:
        from scene.trainer import Trainer

        trainer = Trainer(cfg)
        print(f"[train] {trainer.avatar.method}: {trainer.avatar.n_gaussians} Gaussians, "
              f"{trainer.subject!r}, device {trainer.device}, output {trainer.run_dir}")
        if trainer.iteration >= cfg.train.iterations:
            print(f"[train] checkpoint is at iteration {trainer.iteration} >= --iterations "
                  f"{cfg.train.iterations}: nothing to do")
            trainer.close()
            return 0
        trainer.run()
        return 0

    return guarded("train.py", body)


if __name__ == "__main__":
    from utils.errors import exit_without_teardown

    exit_without_teardown(main())  # everything is written and closed when main() returns
