"""Small models written in the package (torchvision does not import beside torch 2.13 CPU)."""

from __future__ import annotations

import torch
from torch import nn


class SeedReLU(nn.Module):
    """f(x) = relu(w1·relu(w0·x + b0) + b1): the tiny net of the classic question (four scalars)."""

    def __init__(self, w0: float = 0.5, b0: float = 0.1, w1: float = 0.5, b1: float = 0.1):
        super().__init__()
        self.w0 = nn.Parameter(torch.tensor(w0))
        self.b0 = nn.Parameter(torch.tensor(b0))
        self.w1 = nn.Parameter(torch.tensor(w1))
        self.b1 = nn.Parameter(torch.tensor(b1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.w1 * torch.relu(self.w0 * x + self.b0) + self.b1)


def mlp(sizes: list[int], activation: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    """Linear layers of the given widths with ``activation`` between them."""
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


class SmallCNN(nn.Module):
    """Two 3×3 conv layers with BatchNorm, max-pooling and a linear classifier (8×8 inputs)."""

    def __init__(self, channels: int = 8, classes: int = 10, side: int = 8):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU(),
            nn.Conv2d(channels, 2 * channels, 3, padding=1), nn.BatchNorm2d(2 * channels), nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Linear(2 * channels * (side // 2) ** 2, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


class BasicBlock(nn.Module):
    """conv-BN-ReLU-conv-BN (+ shortcut when ``skip``) then ReLU (He et al. 2016)."""

    def __init__(self, c_in: int, c_out: int, stride: int, skip: bool):
        super().__init__()
        self.skip = skip
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if skip and (stride != 1 or c_in != c_out):
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        if self.skip:
            out = out + self.shortcut(x)
        return torch.relu(out)


class SmallResNet(nn.Module):
    """A small residual network (stem + 3 stages of 2 blocks); ``skip=False`` removes every shortcut,
    giving the plain network of Li et al.'s ResNet-56 vs ResNet-56-noshort comparison."""

    def __init__(self, skip: bool = True, width: int = 8, classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        blocks = []
        c = width
        for stage, stride in enumerate((1, 2, 2)):
            c_out = width * 2**stage
            blocks += [BasicBlock(c, c_out, stride, skip), BasicBlock(c_out, c_out, 1, skip)]
            c = c_out
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(c, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.blocks(self.stem(x))
        return self.fc(h.mean(dim=(2, 3)))
