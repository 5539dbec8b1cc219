"""Vision transformers: torchvision's VisionTransformer at small sizes."""
