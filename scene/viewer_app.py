"""The browser side of ``view.py``: a viser page around a :class:`~scene.viewer.ViewerModel`.

Every connected browser gets the avatar rendered for its own camera (orbit with the mouse) at its canvas
size, as the page's background image. The controls (one set, shared by all browsers): the sequence
timeline with play/pause and speed, ground truth beside the render, expression sliders on top of the
current frame, uncertainty colours (HyperGaussians) and the error map, the render time, and buttons that
save the view as PNG and a turn about the head as MP4 (into ``<run>/viewer/`` and to the browser).

A render thread redraws a browser's view when its camera, its canvas size or a control changed, and
advances the timeline while playing; nothing is drawn while nothing changes.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import torch

from scene.viewer import Edits, ViewerModel, ViewPose, ViewRequest, pose_of_camera
from utils.image_io import write_image
from utils.video import write_video

N_EXPRESSION_SLIDERS = 5
ORBIT_FRAMES = 60


class ViewerApp:
    """The viser server, its controls and the render thread. ``close()`` stops both."""

    def __init__(self, model: ViewerModel, host: str = "127.0.0.1", port: int = 8080,
                 out_dir: Path | None = None) -> None:
        import viser

        self.model = model
        self.out_dir = Path(out_dir) if out_dir is not None else model.run_dir / "viewer"
        self.server = viser.ViserServer(host=host, port=port, verbose=False)
        self.port = self.server.get_port()
        self.host = host
        self._version = 0  # bumped by every control change
        self._rendered: dict[int, tuple] = {}  # client id -> what its current image shows
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._position = 0.0  # playback position in frames
        self._build_gui()
        self.server.on_client_connect(self._connect)
        self._thread = threading.Thread(target=self._loop, name="viewer-render", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host = "localhost" if self.host in ("0.0.0.0", "127.0.0.1") else self.host
        return f"http://{host}:{self.port}"

    # -- controls ----------------------------------------------------------------------------------
    def _build_gui(self) -> None:
        g, m = self.server.gui, self.model
        # the controls in a side bar of their own, so that they never cover the views
        g.configure_theme(control_width="medium", show_logo=False, show_share_button=False)
        g.main_panel.dock_right()
        g.add_markdown(f"**{m.subject.idname}**: " + " | ".join(m.labels))
        with g.add_folder("Sequence"):
            self.timeline = g.add_slider("Frame", min=0, max=max(m.n_frames - 1, 1), step=1, initial_value=0)
            self.play = g.add_checkbox("Play", initial_value=False)
            self.speed = g.add_slider("Speed", min=0.25, max=4.0, step=0.25, initial_value=1.0)
            self.show_gt = g.add_checkbox("Ground truth beside", initial_value=False,
                                          disabled=m.source is not m.subject)
        with g.add_folder("Expression"):
            self.jaw = g.add_slider("Jaw opening (deg)", min=-5.0, max=30.0, step=0.5, initial_value=0.0)
            self.eye_yaw = g.add_slider("Eyes left/right (deg)", min=-30.0, max=30.0, step=1.0,
                                        initial_value=0.0)
            self.eye_pitch = g.add_slider("Eyes up/down (deg)", min=-30.0, max=30.0, step=1.0,
                                          initial_value=0.0)
            self.eyelids = g.add_slider("Eyelids", min=-1.0, max=1.0, step=0.05, initial_value=0.0)
            self.expression = [g.add_slider(f"Expression {i + 1}", min=-3.0, max=3.0, step=0.1,
                                            initial_value=0.0) for i in range(N_EXPRESSION_SLIDERS)]
            reset = g.add_button("Reset expression")
        with g.add_folder("Display"):
            self.uncertainty = g.add_checkbox("Uncertainty colours", initial_value=False,
                                              disabled=not m.has_uncertainty)
            self.error = g.add_checkbox("Error map (tracked camera)", initial_value=False,
                                        disabled=m.source is not m.subject)
            self.fps_text = g.add_markdown("render: -")
            save_png = g.add_button("Save view as PNG")
            save_orbit = g.add_button("Save orbit as MP4")
        for handle in [self.timeline, self.show_gt, self.jaw, self.eye_yaw, self.eye_pitch, self.eyelids,
                       self.uncertainty, self.error, *self.expression]:
            handle.on_update(lambda _event: self._changed())
        self.play.on_update(lambda _event: self._playback_toggled())

        @reset.on_click
        def _(_event) -> None:
            for handle in [self.jaw, self.eye_yaw, self.eye_pitch, self.eyelids, *self.expression]:
                handle.value = 0.0

        save_png.on_click(lambda event: self._save_png(event.client))
        save_orbit.on_click(lambda event: self._save_orbit(event.client))

    def _changed(self) -> None:
        self._version += 1
        self._wake.set()

    def _playback_toggled(self) -> None:
        self._position = float(self.timeline.value)
        self._wake.set()

    def edits(self) -> Edits:
        return Edits(jaw_open_deg=self.jaw.value, eye_yaw_deg=self.eye_yaw.value,
                     eye_pitch_deg=self.eye_pitch.value, eyelids=self.eyelids.value,
                     expression=[h.value for h in self.expression])

    # -- browsers ----------------------------------------------------------------------------------
    def _connect(self, client) -> None:
        """Start a new browser at the tracked camera of the current frame, orbiting about the head."""
        k = int(self.timeline.value)
        cam = self.model.tracked_camera(k)
        pose = pose_of_camera(cam)
        R_cw = cam.R.detach().double().cpu().T
        centre = torch.tensor(self.model.look_at(k), dtype=torch.float64)
        position = torch.tensor(pose.position, dtype=torch.float64)
        forward = R_cw[:, 2]
        depth = float((centre - position) @ forward)
        with client.atomic():
            client.camera.fov = pose.fov_y
            client.camera.wxyz = pose.wxyz
            client.camera.position = pose.position
            client.camera.look_at = tuple(float(v) for v in position + forward * depth)
            client.camera.up_direction = tuple(float(v) for v in -R_cw[:, 1])
        client.camera.on_update(lambda _camera: self._wake.set())
        self._wake.set()

    def request(self, client) -> ViewRequest | None:
        """What ``client``'s view shows now; None before its canvas has a size."""
        cam = client.camera
        width, height = int(cam.image_width or 0), int(cam.image_height or 0)
        if width <= 0 or height <= 0:
            return None
        pose = ViewPose(tuple(float(v) for v in cam.wxyz), tuple(float(v) for v in cam.position),
                        float(cam.fov))
        return ViewRequest(int(self.timeline.value), pose, width, height, self.edits(),
                           uncertainty=bool(self.uncertainty.value), error=bool(self.error.value),
                           ground_truth=bool(self.show_gt.value))

    def _draw(self, client) -> None:
        cam = client.camera
        key = (self._version, cam.update_timestamp, cam.image_width, cam.image_height)
        if self._rendered.get(client.client_id) == key:
            return
        req = self.request(client)
        if req is None:
            return
        image = self.model.render(req)
        client.scene.set_background_image(image, format="jpeg", jpeg_quality=90)
        self._rendered[client.client_id] = key
        ms = self.model.last_ms
        self.fps_text.content = (f"render: {ms:.1f} ms ({1000.0 / max(ms, 1e-6):.0f} FPS) at "
                                 f"{image.shape[1]}x{image.shape[0]} on {self.model.device.type}")

    def _loop(self) -> None:
        last = time.perf_counter()
        while not self._stop.is_set():
            self._wake.wait(timeout=1.0 / 60.0)
            self._wake.clear()
            now = time.perf_counter()
            if self.play.value and self.model.n_frames > 1:
                step = (now - last) * self.model.cfg.view.fps * self.speed.value
                self._position = (self._position + step) % self.model.n_frames
                if int(self._position) != int(self.timeline.value):
                    self.timeline.value = int(self._position)  # its callback marks every view stale
            last = now
            for client in list(self.server.get_clients().values()):
                try:
                    self._draw(client)
                except Exception as exc:  # a browser that left mid-draw, or a failed render: say so
                    print(f"[view] drawing for browser {client.client_id} failed: "
                          f"{type(exc).__name__}: {exc}")
                    self._rendered[client.client_id] = None
                    time.sleep(0.5)

    # -- saving --------------------------------------------------------------------------------------
    def _stamp(self) -> str:
        return time.strftime("%Y%m%d-%H%M%S")

    def _save_png(self, client) -> Path | None:
        req = self.request(client)
        if req is None:
            return None
        path = write_image(self.out_dir / f"view_{req.frame:05d}_{self._stamp()}.png",
                           self.model.render(req))
        client.send_file_download(path.name, path.read_bytes())
        client.add_notification("Saved", str(path), auto_close_seconds=5.0)
        print(f"[view] saved {path}")
        return path

    def _save_orbit(self, client) -> Path | None:
        req = self.request(client)
        if req is None:
            return None
        note = client.add_notification("Rendering orbit", f"{ORBIT_FRAMES} frames", loading=True,
                                       with_close_button=False)
        path = write_video(self.out_dir / f"orbit_{req.frame:05d}_{self._stamp()}.mp4",
                           self.model.orbit(req, ORBIT_FRAMES), fps=self.model.cfg.view.fps)
        note.remove()
        client.send_file_download(path.name, path.read_bytes())
        client.add_notification("Saved", str(path), auto_close_seconds=5.0)
        print(f"[view] saved {path}")
        return path

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=5.0)
        self.server.stop()
