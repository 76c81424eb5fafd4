"""The data side of a subject: tracked frames (``tracking``), cameras (``cameras``), frames, masks and
the split (``subject``). Imports nothing from :mod:`scene.model`."""
