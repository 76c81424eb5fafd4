"""Turning a video into a training subject, and the synthetic demo subject."""
