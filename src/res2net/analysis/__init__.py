"""The paper's analyses: complexity, ablation, Grad-CAM, receptive fields."""
