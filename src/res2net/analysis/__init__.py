"""The paper's analyses: complexity, ablation, Grad-CAM, receptive fields (``res2net complexity | ablation |
cam | receptive-field``; see docs/ANALYSES.md)."""

from .cam import GradCAM
from .complexity import complexity_row, measure_latency, measure_memory
from .receptive_field import effective_rf, theoretical_rf

__all__ = ["GradCAM", "complexity_row", "effective_rf", "measure_latency", "measure_memory", "theoretical_rf"]
