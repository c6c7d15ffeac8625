"""Training tasks (classification, detection, segmentation, saliency) on the shared engine."""
