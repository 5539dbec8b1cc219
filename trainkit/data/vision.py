"""torchvision's downloadable image data sets and image folders."""
