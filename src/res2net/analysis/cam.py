"""Grad-CAM (Selvaraju et al. 2017) of any layer of our models, and the Fig. 5 side-by-side figure.

For a target class c and a layer with activations A (N, K, h, w): weights a_k = mean over (h, w) of
dy_c/dA_k, map = ReLU(sum_k a_k A_k), upsampled (bilinear) to the input size and scaled to [0, 1] per image.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ..data.photos import load_image, resize_center, sample_images
from ..files import save_torch, write_text
from ..jsonio import write_json
from ..reporting import md_table, out_dir, pyplot, save_image_grid
from .common import trained_model


def resolve_layer(model: nn.Module, layer: Optional[str] = None) -> nn.Module:
    """The module named ``layer`` (``model.named_modules()`` name); default: the last stage."""
    if layer is None:
        stages = model.stage_modules() if hasattr(model, "stage_modules") else []
        if not stages:
            raise ValueError("model has no stages: pass --layer NAME")
        return stages[-1]
    modules = dict(model.named_modules())
    if layer not in modules:
        stage_names = [n for n in modules if n and "." not in n]
        raise ValueError(f"--layer {layer!r} is not a module of the model; top-level modules: "
                         f"{', '.join(stage_names)}")
    return modules[layer]


class GradCAM:
    """Grad-CAM on ``layer`` of ``model`` (hooks are registered per call and removed afterwards).

    >>> from res2net import create_model
    >>> m = create_model("res2net20_cifar").eval()
    >>> maps, targets = GradCAM(m)(torch.rand(2, 3, 32, 32))
    >>> tuple(maps.shape), bool(maps.min() >= 0 and maps.max() <= 1)
    ((2, 32, 32), True)
    """

    def __init__(self, model: nn.Module, layer: Optional[str] = None) -> None:
        self.model = model
        self.layer = resolve_layer(model, layer)

    def __call__(self, x: Tensor, target: Optional[int | Sequence[int]] = None) -> Tuple[Tensor, List[int]]:
        """Maps (N, H, W) in [0, 1] and the target class of each image (default: the predicted one)."""
        store: Dict[str, Tensor] = {}

        def hook(_module: nn.Module, _inputs: Any, output: Tensor) -> None:
            store["act"] = output
            output.register_hook(lambda g: store.__setitem__("grad", g))

        handle = self.layer.register_forward_hook(hook)
        try:
            with torch.enable_grad():
                logits = self.model(x.requires_grad_(True) if not x.requires_grad else x)
                if target is None:
                    targets = logits.argmax(1).tolist()
                else:
                    targets = [target] * x.shape[0] if isinstance(target, int) else list(target)
                    bad = [t for t in targets if not 0 <= t < logits.shape[1]]
                    if bad or len(targets) != x.shape[0]:
                        raise ValueError(f"--target must be a class in [0, {logits.shape[1]}) for each image; "
                                         f"got {target!r}")
                score = logits.gather(1, torch.tensor(targets, device=logits.device)[:, None]).sum()
                self.model.zero_grad(set_to_none=True)
                score.backward()
        finally:
            handle.remove()
        act, grad = store["act"].detach(), store["grad"].detach()
        weights = grad.mean((2, 3), keepdim=True)
        cam = torch.relu((weights * act).sum(1, keepdim=True))
        cam = nn.functional.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        lo = cam.amin((1, 2), keepdim=True)
        hi = cam.amax((1, 2), keepdim=True)
        return (cam - lo) / (hi - lo).clamp_min(1e-7), targets


def class_names(num_classes: int) -> Optional[List[str]]:
    """ImageNet class names (from torchvision's weight metadata) for 1000-class models, else None."""
    if num_classes != 1000:
        return None
    from torchvision.models import ResNet50_Weights

    return list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


def overlay_figure(images: Sequence[Tuple[str, Tensor]], results: Sequence[Dict[str, Any]], path: Path) -> None:
    """Fig. 5 layout: one row per image; the image, then each model's map over it (jet, alpha 0.5)."""
    plt = pyplot()
    cols = 1 + len(results)
    fig, axes = plt.subplots(len(images), cols, figsize=(3 * cols, 3 * len(images)), squeeze=False)
    for i, (name, img) in enumerate(images):
        shown = img.permute(1, 2, 0).numpy()
        axes[i][0].imshow(shown.squeeze(), cmap="gray" if shown.shape[-1] == 1 else None)
        axes[i][0].set_title(name, fontsize=9)
        for j, res in enumerate(results, start=1):
            axes[i][j].imshow(shown.squeeze(), cmap="gray" if shown.shape[-1] == 1 else None)
            axes[i][j].imshow(res["maps"][i].numpy(), cmap="jet", alpha=0.5, vmin=0, vmax=1)
            axes[i][j].set_title(f"{res['model']}\n{res['labels'][i]}", fontsize=8)
    save_image_grid(fig, axes, path)


def run_cam(model: nn.Module, name: str, images: Sequence[Tuple[str, Tensor]], mean: Sequence[float],
            std: Sequence[float], layer: Optional[str] = None, target: Optional[int] = None) -> Dict[str, Any]:
    """Grad-CAM of ``model`` on already resized images (C, S, S) in [0, 1]: maps, targets, labels, scores."""
    x = torch.stack([img for _, img in images])
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    maps, targets = GradCAM(model, layer)((x - m) / s, target)
    names = class_names(model.num_classes)
    labels = [f"{t}: {names[t]}" if names else f"class {t}" for t in targets]
    return {"model": name, "maps": maps, "targets": targets, "labels": labels}


def cam_report(models: Sequence[Tuple[str, Optional[str]]], out: str | Path, images: Sequence[str] = (),
               layer: Optional[str] = None, target: Optional[int] = None, input_size: Optional[int] = None,
               command: str = "res2net cam") -> Path:
    """Grad-CAM of one model or more, side by side, on image files or the scikit-image sample photos: ``cam.png``,
    ``cam.json``, ``maps.pt`` and ``report.md`` in ``out``.

    Args:
        models: (name, checkpoint) per model; a None checkpoint is random weights.
        out: the report folder (created).
        images: image files (empty: the sample photos).
        layer: the module explained (``model.named_modules`` name; None: the last stage).
        target: the class explained (None: each model's prediction).
        input_size: image side (None: the first model card's; later maps are resized to match).
        command: the command line recorded in the report.

    Returns:
        The path of ``report.md``.
    """
    raw = [(Path(p).stem, load_image(p)) for p in images] if images else sample_images()
    folder = out_dir(out)
    results = []
    shown = None
    for name, ckpt in models:
        model, prep = trained_model(name, ckpt)
        size = input_size or prep.input_size
        resized = [(n, resize_center(img, size, model.in_chans)) for n, img in raw]
        res = run_cam(model, name, resized, prep.mean, prep.std, layer, target)
        shown = shown or resized
        side = shown[0][1].shape[-1]
        if res["maps"].shape[-1] != side:  # the second model's card has another input size: match the figure
            res["maps"] = torch.nn.functional.interpolate(res["maps"][:, None], size=(side, side), mode="bilinear",
                                                          align_corners=False)[:, 0]
        results.append(res)
    assert shown is not None
    overlay_figure(shown, results, folder / "cam.png")
    summary = [{"model": r["model"], "image": n, "target": t, "label": lab}
               for r in results for (n, _), t, lab in zip(shown, r["targets"], r["labels"])]
    write_json(folder / "cam.json", {"layer": layer or "last stage", "results": summary})
    save_torch({r["model"]: r["maps"] for r in results}, folder / "maps.pt")
    lines = ["# Grad-CAM", "", f"Command: `{command}`", "",
             f"Layer: {layer or 'last stage'}; weights: "
             + ", ".join(f"{n} {'(' + str(c) + ')' if c else '(random: no checkpoint)'}" for n, c in models if n),
             ""] + md_table(["model", "image", "target"], [[s["model"], s["image"], s["label"]] for s in summary])
    write_text(folder / "report.md", "\n".join(lines + ["", "![cam](cam.png)", ""]))
    return folder / "report.md"
