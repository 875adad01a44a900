import os

import pytest
import torch
from hypothesis import settings

settings.register_profile("default", deadline=None, max_examples=25)
# HYPOTHESIS_PROFILE=thorough: a deep search of every property (CI draws new examples on each run, so a
# property that holds only for most inputs fails there sooner or later; run this before relying on one)
settings.register_profile("thorough", deadline=None, max_examples=2000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
torch.set_num_threads(int(os.environ.get("LOSSATLAS_TEST_THREADS", "1")))  # see ../conftest.py


class TinyMLP(torch.nn.Module):
    def __init__(self, d_in=5, hidden=7, d_out=3, act=torch.nn.Tanh):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(d_in, hidden), act(), torch.nn.Linear(hidden, hidden), act(),
                                       torch.nn.Linear(hidden, d_out))

    def forward(self, x):
        return self.net(x)


class SmallCNN(torch.nn.Module):
    """Conv + BatchNorm + dropout: exercises eval mode, buffers and filter layouts."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(4)
        self.drop = torch.nn.Dropout(0.5)
        self.fc = torch.nn.Linear(4 * 4 * 4, 3)

    def forward(self, x):
        h = torch.relu(self.bn(self.conv(x)))
        h = torch.nn.functional.max_pool2d(h, 2)
        return self.fc(self.drop(h.flatten(1)))


@pytest.fixture
def classification():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(60, 5, generator=g)
    y = torch.randint(0, 3, (60,), generator=g)
    torch.manual_seed(0)
    return TinyMLP(), torch.nn.CrossEntropyLoss(), x, y


@pytest.fixture
def cnn_data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(40, 1, 8, 8, generator=g)
    y = torch.randint(0, 3, (40,), generator=g)
    torch.manual_seed(1)
    model = SmallCNN()
    # non-trivial running statistics
    with torch.no_grad():
        model.train()
        model(x)
    model.train()  # left in train mode on purpose: lossatlas must evaluate in eval mode without changing it
    return model, torch.nn.CrossEntropyLoss(), x, y
