"""mad-distill: Multimodal Adaptive Distillation for vision-language models."""

__version__ = "0.1.0"
