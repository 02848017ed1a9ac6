"""ddpm_lightning: denoising diffusion models with PyTorch Lightning and Hydra."""
