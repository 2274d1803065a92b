"""Input constants: image sizes, the colour statistics and normalisations of each weight family.

Plain numbers (no TensorFlow), shared by the input pipeline, the weight registry and the parity
tool; docs/paper.md gives their sources.
"""

from __future__ import annotations

# Training: the smaller side is rescaled to S (fixed, or drawn per image from [Smin, Smax]), then
# one random CROP_SIZE crop is taken.
TRAIN_SCALE = 256
CROP_SIZE = 224
# AlexNet's PCA lighting for pixels in [0, 1], RGB order; eigenvectors are the COLUMNS.
PCA_LIGHTING_STD = 0.1
IMAGENET_PCA_EIGVAL = (0.2175, 0.0188, 0.0045)
IMAGENET_PCA_EIGVEC = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)
# torchvision's weights: resize the smaller side to 256 (bilinear), centre crop 224, RGB in [0, 1]
# normalised by mean and std.
TORCHVISION_RESIZE = 256
TORCHVISION_MEAN = (0.485, 0.456, 0.406)
TORCHVISION_STD = (0.229, 0.224, 0.225)
# The authors' Caffe models: BGR pixels in 0-255 minus the ImageNet mean pixel, no std.
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
IMAGENET_MEAN_RGB = CAFFE_MEAN_BGR[::-1]
