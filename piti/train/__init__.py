"""Training: stages, the training loop and the upsampler's extra losses.

Submodules are imported explicitly (``from piti.train.losses import PerceptualLoss``) so that
importing ``piti.train`` stays cheap.
"""
