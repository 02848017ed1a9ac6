"""Train a diffusion model: `python train.py [group=option ...] [key=value ...]`.

See the README, or `python train.py --help` for the config groups."""

from ddpm_lightning.train import main

if __name__ == "__main__":
    main()
