"""The deformation model (docs/maths.md section 5): one shared trunk MLP and two interchangeable heads.

Trunk, per Gaussian: input concat(encoding (51), condition (120)) -> ``hidden_layers`` Linear+ReLU of
``hidden_dim`` -> one linear output layer. The condition is the same for every Gaussian, so the first
layer is evaluated split: ``enc @ W_enc^T + (W_cond @ cond + b)`` with the condition part computed once
and broadcast, never materialising an (N, 171) input (same maths; the weight is still one
``nn.Linear`` over the concatenated input, so the state dict is the concatenated model's).

Heads (the only difference between the methods):

- :class:`DirectHead` (FlashAvatar baseline): the trunk outputs the 10 offsets directly.
- :class:`HyperHead` (HyperGaussians, ``--ours``): the trunk outputs a latent per Gaussian; three
  :class:`~scene.model.hypergaussians.HyperGaussian` modules (position 3, rotation 4, scale 3) turn it
  into the same 10 numbers by their conditional means, plus the summed uncertainty (the three are blocks of
  one module: same maths, a third of the kernel launches).

Both heads' 10 numbers go through tanh: d_xyz (3), d_rot (4), d_scale (3). Mapping them onto the
Gaussians (position + d_xyz, quaternion (exp(d_rot0), d_rot1..3), scale coefficient exp(d_scale)) is
``GaussianModel.compose``'s job.

Conditional appearance (off by default) adds a colour (3, through a sigmoid; replaces the SH colour) and
an opacity logit (1, pre-sigmoid; replaces the opacity parameter):

- HyperGaussians: the trunk outputs 2 x latent_dim (geometry half, appearance half); two more modules
  (colour, opacity) condition on the appearance half, concatenated with the unit view direction per
  Gaussian when ``camera_conditioning`` is on (in_dim latent_dim + 3).
- Baseline (our analogue): the trunk has 4 extra outputs, colour (3) and opacity logit (1), not
  squashed by the tanh; with ``camera_conditioning`` the unit view direction is 3 more trunk inputs
  (a third, per-Gaussian block of the split first layer).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flame.condition import CONDITION_DIM
from scene.model.hypergaussians import HyperGaussian
from utils import fast_paths
from utils.optim import make_adam

ENCODING_DIM = 51
GEOMETRY_DIMS = (3, 4, 3)  # d_xyz, d_rot, d_scale
N_GEOMETRY = sum(GEOMETRY_DIMS)
APPEARANCE_DIMS = (3, 1)  # colour, opacity logit
DEFORMATION_LR = 1e-4


@dataclass
class DeformationOutput:
    """Per-Gaussian outputs, N rows each. ``d_xyz`` (N,3), ``d_rot`` (N,4), ``d_scale`` (N,3) are tanh
    outputs; ``colors`` (N,3) in [0,1] and ``opacity_logits`` (N,1) only with conditional appearance;
    ``uncertainty`` (N,) only for HyperGaussians (summed log det of the three geometry modules)."""

    d_xyz: Tensor
    d_rot: Tensor
    d_scale: Tensor
    colors: Tensor | None = None
    opacity_logits: Tensor | None = None
    uncertainty: Tensor | None = None


def unit_view_directions(positions: Tensor, camera_center: Tensor) -> Tensor:
    """Unit vector from the camera centre to each Gaussian (N,3), each row normalised on its own."""
    return F.normalize(positions - camera_center.to(positions), dim=-1)


class _LinearReLU(torch.autograd.Function):
    """relu(x @ weight^T + bias) as one GEMM with bias and ReLU in its epilogue (``torch._addmm_activation``,
    cuBLASLt on CUDA); the backward masks the output gradient by the saved output (as autograd does for
    a separate ReLU) and forms the three gradients of the linear layer."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        y = torch._addmm_activation(bias, x, weight.t())
        ctx.save_for_backward(x, weight, y)
        return y

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        x, weight, y = ctx.saved_tensors
        g = torch.ops.aten.threshold_backward(grad, y, 0)
        gx = g @ weight if ctx.needs_input_grad[0] else None
        gw = g.t() @ x if ctx.needs_input_grad[1] else None
        gb = g.sum(0) if ctx.needs_input_grad[2] else None
        return gx, gw, gb


def linear_relu(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """relu(x @ weight^T + bias) for x (N, in), weight (out, in), bias (out,): fused (fast path
    ``linear_relu``) or as F.linear then F.relu."""
    if fast_paths.enabled("linear_relu") and x.dim() == 2 and bias.dim() == 1:
        return _LinearReLU.apply(x, weight, bias)
    return F.relu(F.linear(x, weight, bias))


class Trunk(nn.Module):
    """``hidden_layers`` Linear+ReLU of ``hidden_dim`` then a linear output, over the input
    concat(encoding, condition[, view dir]); the first layer is evaluated split (see module doc)."""

    def __init__(self, enc_dim: int, cond_dim: int, out_dim: int, hidden_dim: int = 256,
                 hidden_layers: int = 6, view_dim: int = 0) -> None:
        super().__init__()
        if hidden_layers < 1:
            raise ValueError(f"hidden_layers must be >= 1, got {hidden_layers}")
        self.enc_dim, self.cond_dim, self.view_dim = enc_dim, cond_dim, view_dim
        in_dim = enc_dim + cond_dim + view_dim
        self.layers = nn.ModuleList(
            [nn.Linear(in_dim if k == 0 else hidden_dim, hidden_dim) for k in range(hidden_layers)])
        self.out = nn.Linear(hidden_dim, out_dim)

    def forward(self, encoding: Tensor, condition: Tensor, view_dirs: Tensor | None = None) -> Tensor:
        """encoding (N, enc_dim), condition (cond_dim,) shared by all rows, view_dirs (N, 3) or None."""
        first = self.layers[0]
        e, c = self.enc_dim, self.cond_dim
        w = first.weight
        shared = F.linear(condition.reshape(1, c), w[:, e:e + c], first.bias)  # (1, H), once per frame
        if self.view_dim:
            if view_dirs is None:
                raise ValueError("this deformation model is camera-conditioned: pass view_dirs (N, 3)")
            h = F.relu(torch.addmm(torch.addmm(shared, encoding, w[:, :e].t()), view_dirs, w[:, e + c:].t()))
        else:
            h = linear_relu(encoding, w[:, :e], shared.reshape(-1))
        for layer in self.layers[1:]:
            h = linear_relu(h, layer.weight, layer.bias)
        return self.out(h)


class DirectHead(nn.Module):
    """Baseline: the trunk's outputs are the offsets (10 through tanh) and, with conditional appearance,
    colour (3, sigmoid) and opacity logit (1)."""

    def __init__(self, appearance: bool) -> None:
        super().__init__()
        self.appearance = appearance

    @property
    def trunk_out_dim(self) -> int:
        return N_GEOMETRY + (4 if self.appearance else 0)

    @property
    def trunk_view_dim(self) -> int:
        return 3

    def forward(self, trunk_out: Tensor, view_dirs: Tensor | None, uncertainty: bool = True
                ) -> DeformationOutput:
        geo = torch.tanh(trunk_out[:, :N_GEOMETRY])
        d_xyz, d_rot, d_scale = geo.split(GEOMETRY_DIMS, dim=-1)
        if not self.appearance:
            return DeformationOutput(d_xyz, d_rot, d_scale)
        colors = torch.sigmoid(trunk_out[:, N_GEOMETRY:N_GEOMETRY + 3])
        return DeformationOutput(d_xyz, d_rot, d_scale, colors, trunk_out[:, N_GEOMETRY + 3:N_GEOMETRY + 4])


class HyperHead(nn.Module):
    """HyperGaussians: latent per Gaussian -> conditional means of per-attribute HyperGaussians.

    ``geometry`` holds the position (3), rotation (4) and scale (3) HyperGaussians as three blocks of one
    module (independent maths, shared kernels); ``appearance`` the colour (3) and opacity (1) ones."""

    def __init__(self, n_gaussians: int, latent_dim: int, appearance: bool,
                 camera_conditioning: bool) -> None:
        super().__init__()
        self.latent_dim, self.appearance_on = latent_dim, appearance
        self.camera_conditioning = camera_conditioning
        self.geometry = HyperGaussian(n_gaussians, latent_dim, GEOMETRY_DIMS)
        if appearance:
            app_in = latent_dim + (3 if camera_conditioning else 0)
            self.appearance = HyperGaussian(n_gaussians, app_in, APPEARANCE_DIMS)

    @property
    def trunk_out_dim(self) -> int:
        return self.latent_dim * (2 if self.appearance_on else 1)

    @property
    def trunk_view_dim(self) -> int:
        return 0

    def forward(self, trunk_out: Tensor, view_dirs: Tensor | None, uncertainty: bool = True
                ) -> DeformationOutput:
        """``uncertainty`` False leaves the output's uncertainty None (frames that do not show it)."""
        z_geo = trunk_out[:, :self.latent_dim]
        geo = torch.tanh(self.geometry.conditional_mean(z_geo))
        d_xyz, d_rot, d_scale = geo.split(GEOMETRY_DIMS, dim=-1)
        uncertainty = self.geometry.uncertainty() if uncertainty else None
        if not self.appearance_on:
            return DeformationOutput(d_xyz, d_rot, d_scale, uncertainty=uncertainty)
        z_app = trunk_out[:, self.latent_dim:]
        if self.camera_conditioning:
            if view_dirs is None:
                raise ValueError("this deformation model is camera-conditioned: pass view_dirs (N, 3)")
            z_app = torch.cat([z_app, view_dirs], dim=-1)
        app = self.appearance.conditional_mean(z_app)
        return DeformationOutput(d_xyz, d_rot, d_scale, torch.sigmoid(app[:, :3]), app[:, 3:4], uncertainty)


class DeformationModel(nn.Module):
    """Shared trunk + one head. ``ours`` picks the HyperGaussian head (``n_gaussians`` sizes its
    per-Gaussian parameters); the baseline head has none, but ``n_gaussians`` still fixes N."""

    def __init__(self, n_gaussians: int, *, ours: bool = False, hidden_dim: int = 256,
                 hidden_layers: int = 6, latent_dim: int = 32, conditional_appearance: bool = False,
                 camera_conditioning: bool = False, enc_dim: int = ENCODING_DIM,
                 cond_dim: int = CONDITION_DIM) -> None:
        super().__init__()
        if camera_conditioning and not conditional_appearance:
            raise ValueError("camera_conditioning only acts on the conditional appearance: "
                             "turn on conditional_appearance too")
        self.n_gaussians, self.ours = n_gaussians, ours
        self.conditional_appearance, self.camera_conditioning = conditional_appearance, camera_conditioning
        if ours:
            self.head: nn.Module = HyperHead(n_gaussians, latent_dim, conditional_appearance,
                                             camera_conditioning)
        else:
            self.head = DirectHead(conditional_appearance)
        view_dim = self.head.trunk_view_dim if camera_conditioning else 0
        self.trunk = Trunk(enc_dim, cond_dim, self.head.trunk_out_dim, hidden_dim, hidden_layers, view_dim)

    def forward(self, encoding: Tensor, condition: Tensor, view_dirs: Tensor | None = None,
                uncertainty: bool = True) -> DeformationOutput:
        """encoding (N, 51), condition (120,) (or (1,120)), view_dirs (N,3) unit vectors when
        camera-conditioned (ignored otherwise). ``uncertainty`` False skips HyperGaussians' uncertainty
        (None in the output): a frame's render does not use it (two launches fewer)."""
        if encoding.shape[0] != self.n_gaussians:
            raise ValueError(f"DeformationModel was built for {self.n_gaussians} Gaussians, "
                             f"got an encoding of {encoding.shape[0]}")
        if not self.camera_conditioning:
            view_dirs = None
        return self.head(self.trunk(encoding, condition, view_dirs), view_dirs, uncertainty)

    @torch.no_grad()
    def start_at_rest(self) -> None:
        """Baseline: zero the output rows of the offsets, so every Gaussian starts on the mesh with its base
        rotation and scale (tanh(0) = 0) instead of PyTorch's random shift of the whole head (the
        original's start; docs/maths.md section 5). HyperGaussians start there by construction."""
        if not self.ours:
            self.trunk.out.weight[:N_GEOMETRY].zero_()
            self.trunk.out.bias[:N_GEOMETRY].zero_()

    def make_optimizer(self, lr: float = DEFORMATION_LR) -> torch.optim.Adam:
        """Adam over the trunk and the HyperGaussian modules: lr 1e-4, betas (0.9, 0.999), eps 1e-8;
        fused on CUDA (utils.optim.make_adam)."""
        return make_adam(self.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-8)
