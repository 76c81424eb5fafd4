"""gaussian_renderer package."""
