"""Turning a video into a training subject, and the synthetic demo subject."""

DEMO_IDNAME = "demo"  # train.py --idname demo generates it (synthetic_subject.py) when it is missing
