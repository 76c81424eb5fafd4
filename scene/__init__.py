"""Avatar data: tracking frames, subjects, cameras, the UV embedding, Gaussians and deformation models."""
