"""Is the int8 error of a whole model the kernels' fault or the net's? Compare, in PyTorch, the output
error of int8 fake-quantization of every unified layer's input (what the int8 kernels compute, checked
by tests/test_lower_pass.py) with the error of 1% Gaussian noise on the same inputs.

A BatchNorm-calibrated *untrained* net that turns 1% input noise into a large output error amplifies
any perturbation: its int8 figure says nothing about a trained model's int8 accuracy.

    python benchmarks/int8_sensitivity.py
"""

from __future__ import annotations

import numpy as np
import torch

from tvm_unify.testing import fake_quant_reference, unified_model


def gaussian_noise(module, inputs, rel: float = 0.01):
    (a,) = inputs
    return (a + rel * a.std() * torch.randn_like(a),)


def main(samples: int = 8) -> None:
    torch.manual_seed(0)
    print("| model (4x4 blocks, sparsity 0.75) | int8 fake-quant rel err | 1% Gaussian noise rel err |")
    print("|---|---|---|")
    for name in ("resnet18", "mobilenetv2"):
        model, names = unified_model(name)
        modules = dict(model.named_modules())
        rng = np.random.default_rng(0)
        quant, noise = [], []
        for _ in range(samples):
            x = rng.standard_normal((1, 3, 32, 32)).astype("float32")
            with torch.no_grad():
                ref = model(torch.from_numpy(x)).numpy()
            quant.append(np.abs(fake_quant_reference(model, names, x) - ref).max() / np.abs(ref).max())
            hooks = [modules[n].register_forward_pre_hook(gaussian_noise) for n in names]
            with torch.no_grad():
                noisy = model(torch.from_numpy(x)).numpy()
            for h in hooks:
                h.remove()
            noise.append(np.abs(noisy - ref).max() / np.abs(ref).max())
        print(f"| {name} | {np.mean(quant):.3f} | {np.mean(noise):.3f} |")


if __name__ == "__main__":
    main()
