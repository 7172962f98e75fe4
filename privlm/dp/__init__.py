"""Differential privacy for fine-tuning: accountant (Opacus PRV / RDP), Poisson sampling, per-example clipping."""
