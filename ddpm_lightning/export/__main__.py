"""`python -m ddpm_lightning.export`: see `ddpm_lightning.export.cli`."""

from ddpm_lightning.export.cli import main

main()
