"""The startup reference: a hand-written script's path from process start to its first step.

What ``trainkit train`` does before its first step, written by hand with torch alone: load
scikit-learn's digits (8x8), build the same ResNet-8 (trainkit's ``resnet_cifar`` at its
defaults), and take one SGD step on a batch of 64. Writes ``time.time()`` after that step to
the file named by ``$TRAINKIT_BENCH_FIRST_STEP``; run by bench.py.
"""

import os
import time

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn


class Block(nn.Module):
    def __init__(self, inputs: int, outputs: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(inputs, outputs, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(outputs)
        self.conv2 = nn.Conv2d(outputs, outputs, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(outputs)
        self.shortcut = nn.Identity()
        if stride != 1 or inputs != outputs:
            self.shortcut = nn.Sequential(
                nn.Conv2d(inputs, outputs, 1, stride, bias=False), nn.BatchNorm2d(outputs)
            )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


def main() -> None:
    digits = load_digits()
    images = torch.as_tensor(digits.images[:, None] / 16.0, dtype=torch.float32)
    labels = torch.as_tensor(digits.target)
    model = nn.Sequential(
        nn.Conv2d(1, 16, 3, 1, 1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        Block(16, 16, 1),
        Block(16, 32, 2),
        Block(32, 64, 2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, 10),
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    rows = torch.randperm(len(labels))[:64]
    loss = F.cross_entropy(model(images[rows]), labels[rows])
    loss.backward()
    optimizer.step()
    with open(os.environ["TRAINKIT_BENCH_FIRST_STEP"], "w", encoding="utf-8") as handle:
        handle.write(f"{time.time()!r}\n")


if __name__ == "__main__":
    main()
