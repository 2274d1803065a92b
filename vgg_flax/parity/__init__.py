"""Side-by-side checks against PyTorch and Keras (needs the torch or references extra).

The core of vgg-flax never imports this package.
"""
