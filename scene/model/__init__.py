"""The model side of an avatar: UV embedding, Gaussian parameters, deformation heads (baseline |
HyperGaussians), the Avatar, its CUDA-graph captures, checkpoints and PLY export. Imports nothing from
:mod:`scene.data`."""
