"""Shared helpers: options, device handling, image and video I/O, rotations, losses and metrics."""
