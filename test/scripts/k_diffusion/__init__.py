# The two k-diffusion modules A1111 drives its samplers through (sampling.py, external.py), copied
# unchanged from crowsonkb/k-diffusion at ab527a9 (v0.0.16, the commit A1111 1.6–1.10 pins; MIT,
# see LICENSE here). The package's own __init__ imports training code we do not need, so this one
# imports nothing; utils.py holds only the helper those two modules use.
