"""A deliberately slow problem for kill-and-resume tests (imported by a subprocess and by the test)."""
import time

import torch

import lossatlas


class SlowNet(torch.nn.Module):
    def __init__(self, delay=0.0):
        super().__init__()
        torch.manual_seed(0)
        self.l1 = torch.nn.Linear(4, 6)
        self.l2 = torch.nn.Linear(6, 2)
        self.delay = delay

    def forward(self, x):
        if self.delay:
            time.sleep(self.delay)
        return self.l2(torch.tanh(self.l1(x)))


def build(delay=0.0):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(30, 4, generator=g)
    y = torch.randint(0, 2, (30,), generator=g)
    problem = lossatlas.Problem(SlowNet(delay), torch.nn.CrossEntropyLoss(), (x, y))
    d = lossatlas.directions.random(problem, n=2, seed=0)
    return problem, d


def run(store, delay=0.0):
    problem, d = build(delay)
    return lossatlas.surface(problem, None, d, steps=9, span=1.0, strategy="loop", chunk=3, store=store,
                             progress=False)


if __name__ == "__main__":
    import sys

    run(sys.argv[1], delay=float(sys.argv[2]))
