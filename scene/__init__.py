"""One subject's data and its avatar model, in two halves that never import each other.

- :mod:`scene.data`: what was captured: tracked ``.frame`` files, the subject's frames and masks,
  cameras.
- :mod:`scene.model`: what is learnt: the UV embedding, Gaussians, deformation heads, the Avatar,
  checkpoints and PLY export.
- :mod:`scene.assemble` joins them (open a subject, build its avatar) and :mod:`scene.trainer` runs the
  training loop; the command-line scripts use these two.
"""
