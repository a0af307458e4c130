"""Training memory per image of the paper's presets, counted without a GPU (README "Running on a
cluster": sizing workers per GPU).

For each preset at its image size this runs one fp32 forward pass and loss at batch 2 on the CPU
and adds up the storages autograd saves for the backward pass (a saved-tensor hook), which is the
part of training memory that grows with the batch; and it counts the parameters (weights,
gradients, RMSProp state and DDP's gradient buckets: 16 bytes each). A GPU's peak is higher: the
backward pass's temporaries and the CUDA context come on top.

    python benchmarks/activation_memory.py [--presets NAME ...] [--batch 2]
"""

from __future__ import annotations

import argparse

import torch

from pixelrnn_model import PRESETS, PixelRNN, bits_per_dim

IMAGE_SIZES = {"mnist": 28, "cifar10": 32, "imagenet32": 32, "imagenet64": 64}


def saved_bytes_per_image(name: str, batch: int) -> tuple[int, int]:
    """(bytes autograd saves per image, parameter count) for one preset."""
    config = PRESETS[name]
    side = IMAGE_SIZES[name.split("_")[0]]
    model = PixelRNN(config)
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()  # views share one storage
        return tensor

    pixels = torch.randint(0, config.levels, (batch, config.channels, side, side))  # (B, C, H, W)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        bits_per_dim(model(pixels), pixels)
    return sum(storages.values()) // batch, sum(p.numel() for p in model.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=sorted(PRESETS))
    parser.add_argument("--batch", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("| preset | image | parameters | params + grads + RMSProp + DDP | saved per image |")
    print("|---|---|---:|---:|---:|")
    for name in args.presets:
        per_image, params = saved_bytes_per_image(name, args.batch)
        side = IMAGE_SIZES[name.split("_")[0]]
        print(f"| {name} | {side}x{side}x{PRESETS[name].channels} | {params / 1e6:.1f} M | "
              f"{params * 16 / 2**30:.2f} GiB | {per_image / 2**20:.0f} MiB |")  # fmt: skip


if __name__ == "__main__":
    main()
