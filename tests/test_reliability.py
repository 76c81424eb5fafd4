"""Issue 12: no silent NaN, one clear line for every bad input, one writer per run folder, usual file
modes, no stale temporary files, Ctrl-C saves and exits cleanly (CPU, the small synthetic subject)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import metrics
import render
import train
from scene.data.tracking import load_tracked_frame, save_tracked_frame

REPO = Path(__file__).resolve().parents[1]
SMALL = ["--device", "cpu", "--backend", "torch", "--hidden_dim", "32", "--hidden_layers", "2",
         "--uv_size", "16", "--test_num", "4", "--eval_num", "4", "--lambda_lpips", "0", "--grid_every", "0"]


@pytest.fixture(autouse=True)
def _cpu(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path_factory.getbasetemp() / "empty_torch_home"))
    monkeypatch.setenv("GAUSSIAN_RENDERER_BACKEND", "torch")


def _args(subject, log_root: Path, *extra: str) -> list[str]:
    data_root, tracking_root, idname = subject
    return ["--idname", idname, "--data_root", str(data_root), "--tracking_root", str(tracking_root),
            "--log_root", str(log_root), *SMALL, *extra]


def _copy_subject(subject, dst: Path):
    data_root, tracking_root, idname = subject
    shutil.copytree(data_root / idname, dst / "data" / idname)
    shutil.copytree(tracking_root / idname, dst / "track" / idname)
    return type(subject)(dst / "data", dst / "track", idname)


def _one_line(err: str) -> str:
    """The script's one error line (progress bars aside); no traceback."""
    lines = [line for line in err.replace("\r", "\n").splitlines()
             if line.startswith(("train.py:", "render.py:", "metrics.py:"))]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_nan_loss_stops_naming_iteration_and_frame_and_keeps_last_good(synthetic_subject, tmp_path, capsys):
    assert train.main(_args(synthetic_subject, tmp_path, "--iterations", "4", "--skip_test")) == 0
    run = tmp_path / f"{synthetic_subject.idname}_baseline"
    good = (run / "ckpt" / "ckpt4.pth").read_bytes()
    capsys.readouterr()
    # a loss weight that overflows float32: the loss is inf from the first step
    rc = train.main(_args(synthetic_subject, tmp_path, "--iterations", "8", "--resume", "--skip_test",
                          "--lambda_opacity_reg", "1e39", "--log_every", "2"))
    assert rc == 2
    line = _one_line(capsys.readouterr().err)
    assert "NaN/Inf at iteration 5 (training frame" in line and "ckpt4.pth" in line
    assert sorted(p.name for p in (run / "ckpt").iterdir()) == ["ckpt4.pth"]  # no non-finite checkpoint
    assert (run / "ckpt" / "ckpt4.pth").read_bytes() == good
    assert not (run / ".lock").exists()  # the folder was given back
    # a checkpoint that holds NaN is refused by render.py (and by --resume)
    state = torch.load(run / "ckpt" / "ckpt4.pth", weights_only=False)
    key = next(iter(state["gaussians"]))
    state["gaussians"][key] = torch.full_like(state["gaussians"][key], float("nan"))
    torch.save(state, tmp_path / "nan.pth")
    assert render.main(["-m", str(run), "--checkpoint", str(tmp_path / "nan.pth"), "--device", "cpu"]) == 2
    assert "NaN/Inf parameters" in _one_line(capsys.readouterr().err)


def test_bad_tracking_and_images_give_one_line(synthetic_subject, tmp_path, capsys):
    subj = _copy_subject(synthetic_subject, tmp_path)
    frame = subj.tracking_root / subj.idname / "checkpoint" / "00003.frame"
    f = load_tracked_frame(frame)
    save_tracked_frame(frame, shape=f.shape.numpy(), expression=f.expression.numpy() * 0 + 1e30,
                       R=f.R.numpy(), t=f.t.numpy(), K=f.K.numpy(), img_size=f.img_size, jaw=f.jaw.numpy(),
                       eyes=f.eyes.numpy(), eyelids=f.eyelids.numpy(), frame_id=3)
    assert train.main(_args(subj, tmp_path / "logs", "--iterations", "2")) == 2
    line = _one_line(capsys.readouterr().err)
    assert "00003.frame" in line and "flame.exp" in line and "re-track" in line
    assert not (tmp_path / "logs" / f"{subj.idname}_baseline").exists()  # a refused run leaves no folder
    shutil.rmtree(subj.tracking_root / subj.idname)
    shutil.copytree(synthetic_subject.tracking_root / subj.idname, subj.tracking_root / subj.idname)
    img = subj.data_root / subj.idname / "imgs" / "00005.png"
    img.write_bytes(img.read_bytes()[:100])  # a truncated PNG
    for preload in ("cpu", "none"):
        assert train.main(_args(subj, tmp_path / "logs", "--iterations", "2", "--preload", preload,
                                "--overwrite")) == 2
        assert "00005.png" in _one_line(capsys.readouterr().err)


def test_metrics_corrupt_png_is_one_line(synthetic_subject, tmp_path, capsys):
    frames = tmp_path / "frames"
    for sub in ("renders", "gt", "mask"):
        (frames / sub).mkdir(parents=True)
        src = synthetic_subject.data_root / synthetic_subject.idname / ("alpha" if sub == "mask" else "imgs")
        shutil.copy(src / "00000.png", frames / sub / "00000.png")
    (frames / "gt" / "00000.png").write_bytes(b"\x89PNG broken")
    assert metrics.main(["-m", str(frames), "--device", "cpu", "--no_lpips"]) == 2
    assert "00000.png" in _one_line(capsys.readouterr().err)


def test_one_writer_per_run_folder(synthetic_subject, tmp_path, capsys):
    run = tmp_path / f"{synthetic_subject.idname}_baseline"
    run.mkdir()
    (run / ".lock").write_text(f"1 {os.uname().nodename}\n")  # a live process (init) owns it
    assert train.main(_args(synthetic_subject, tmp_path, "--iterations", "2")) == 2
    line = _one_line(capsys.readouterr().err)
    assert "being written by process 1" in line and not (run / "ckpt").exists()
    # a lock left by a process that is gone (kill -9) is taken over; stale temp files are removed
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run / ".lock").write_text(f"{dead.pid} {os.uname().nodename}\n")
    (run / "ckpt").mkdir()
    stale = run / "ckpt" / ".ckpt2.pth.abc123.tmp"
    stale.write_bytes(b"half")
    assert train.main(_args(synthetic_subject, tmp_path, "--iterations", "2", "--skip_test")) == 0
    assert not stale.exists() and not (run / ".lock").exists()
    assert "removed 1 temporary file" in capsys.readouterr().out
    # the usual file modes (0666 less the umask), not mkstemp's 0600
    mask = os.umask(0)
    os.umask(mask)
    for path in (run / "ckpt" / "ckpt2.pth", run / "train_log.json"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask, path


def test_a_fresh_run_into_a_used_folder_needs_resume_or_overwrite(synthetic_subject, tmp_path, capsys):
    common = ("--skip_test", "--ckpt_every", "2")
    assert train.main(_args(synthetic_subject, tmp_path, "--iterations", "4", *common)) == 0
    run = tmp_path / f"{synthetic_subject.idname}_baseline"
    capsys.readouterr()
    assert train.main(_args(synthetic_subject, tmp_path, "--iterations", "2", *common)) == 2
    line = _one_line(capsys.readouterr().err)
    assert "already holds checkpoints" in line and "--resume" in line and "--overwrite" in line
    assert train.main(_args(synthetic_subject, tmp_path, "--iterations", "6", "--resume", *common)) == 0
    assert "resumed from" in capsys.readouterr().out and (run / "ckpt" / "ckpt6.pth").is_file()
    assert train.main(_args(synthetic_subject, tmp_path, "--iterations", "2", "--overwrite", *common)) == 0
    assert sorted(p.name for p in (run / "ckpt").iterdir()) == ["ckpt2.pth"]  # the old later ones are gone
    with pytest.raises(SystemExit):
        train.main(_args(synthetic_subject, tmp_path, "--resume", "--overwrite"))
    with pytest.raises(SystemExit):  # an explicit --eval_num above --test_num is refused, not clamped
        train.main(_args(synthetic_subject, tmp_path, "--eval_num", "9"))
    assert "--eval_num 9 is larger than --test_num 4" in capsys.readouterr().err


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_and_the_log(synthetic_subject, tmp_path):
    args = _args(synthetic_subject, tmp_path, "--iterations", "100000", "--skip_test", "--log_every", "1")
    env = os.environ | {"PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, str(REPO / "train.py"), *args], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    run = tmp_path / f"{synthetic_subject.idname}_baseline"
    log = run / "train_log.json"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # train_log.json appears during training (logging steps)
        try:
            if json.loads(log.read_text())["losses"]:
                break
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("no losses in train_log.json during training")
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "Traceback" not in out and "--resume" in out
    ckpts = list((run / "ckpt").glob("ckpt*.pth"))
    assert len(ckpts) == 1
    it = int(ckpts[0].stem[4:])
    record = json.loads(log.read_text())
    assert record["losses"][-1]["iteration"] == it and any("interrupted" in e for e in record["events"])
    assert not (run / ".lock").exists()


def test_unpaired_frames_name_a_real_flag(synthetic_subject, tmp_path, capsys):
    """The pairing error suggests --allow_missing, and train.py has that flag."""
    subj = _copy_subject(synthetic_subject, tmp_path)
    (subj.data_root / subj.idname / "imgs" / "00007.png").unlink()
    assert train.main(_args(subj, tmp_path / "logs", "--iterations", "2", "--skip_test")) == 2
    line = _one_line(capsys.readouterr().err)
    assert "have no image" in line and "frames 00007" in line and "--allow_missing" in line
    assert train.main(_args(subj, tmp_path / "logs", "--iterations", "2", "--skip_test", "--allow_missing",
                            "--overwrite")) == 0


def _file_size_limit(limit: int):
    """preexec_fn: writes past ``limit`` bytes fail with EFBIG (an OSError, as on a full disk) instead of
    killing the process with SIGXFSZ."""
    import resource

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


@pytest.mark.slow
def test_full_disk_during_a_checkpoint_is_one_line_and_keeps_the_last_good(synthetic_subject, tmp_path):
    """A checkpoint write that fails part way (the disk fills: simulated with a file-size limit) ends with
    one line naming the checkpoint, exit 2; the previous checkpoint is intact and no temporary file is
    left."""
    args = [sys.executable, str(REPO / "train.py"), *_args(synthetic_subject, tmp_path), "--skip_test",
            "--ckpt_every", "5"]
    env = os.environ | {"GAUSSIAN_RENDERER_BACKEND": "torch"}
    first = subprocess.run(args + ["--iterations", "5"], capture_output=True, text=True, env=env, cwd=REPO)
    assert first.returncode == 0, first.stderr[-2000:]
    run = tmp_path / f"{synthetic_subject.idname}_baseline"
    good = run / "ckpt" / "ckpt5.pth"
    before = good.read_bytes()
    assert len(before) > 40_000  # the limit below cuts the next checkpoint part way
    second = subprocess.run(args + ["--iterations", "10", "--resume"], capture_output=True, text=True,
                            env=env, cwd=REPO, preexec_fn=_file_size_limit(20_000))
    assert second.returncode == 2, second.stderr[-2000:]
    line = _one_line(second.stderr)
    assert "ckpt10.pth" in line and "free space" in line
    assert good.read_bytes() == before
    assert sorted(p.name for p in (run / "ckpt").iterdir()) == ["ckpt5.pth"]
    assert not [p for p in run.rglob("*") if p.name.startswith(".") and p.suffix == ".tmp"]
