"""The environment check of ``benchmarks/gpu_check.sh``: what the device machine's Python has of
lossatlas' dependencies, and which of them the GPU checks need.

The device machine (issue 17's GPU row) has a ``python3`` with a CUDA torch and most of the
scientific stack but not every dependency of ``pyproject.toml`` (zarr, gudhi, einconv were missing
when last seen), and no registry to install them from. ``import lossatlas`` and everything the GPU
checks run (in-memory planes, curvature, ``tests/test_cuda.py``) need only the modules marked
``checks`` in :data:`DEPENDENCIES`; the others load lazily where they are used, named in the table.

``python benchmarks/gpu_env.py`` prints the torch/CUDA facts and one line per dependency, and exits
1 when a module the checks need is missing. ``python benchmarks/gpu_env.py --download .whl`` (on a
machine with a registry, before the run) fetches CPython 3.12 manylinux wheels of the optional
dependencies and of what they need beyond the device image (:data:`WHEELS`), at the versions of
``constraints.txt``; ``gpu_check.sh`` installs whatever lies in ``.whl/`` (carry it to the device).
"""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHECKS = "checks"

#: distribution -> (module, who needs it): "checks" for the GPU checks themselves (import lossatlas,
#: planes, the CUDA tests), otherwise what in lossatlas loads it lazily
DEPENDENCIES = {
    "torch": ("torch", CHECKS),
    "numpy": ("numpy", CHECKS),
    "scipy": ("scipy", CHECKS),
    "xarray": ("xarray", CHECKS),
    "scikit-learn": ("sklearn", CHECKS),
    "rich": ("rich", CHECKS),
    "tqdm": ("tqdm", CHECKS),
    "opt_einsum": ("opt_einsum", CHECKS),
    "matplotlib": ("matplotlib", CHECKS),  # the repository's conftest.py selects its Agg backend
    "pytest": ("pytest", CHECKS),
    "hypothesis": ("hypothesis", CHECKS),  # tests/conftest.py registers its profiles
    "zarr": ("zarr", "stores: surface(store=...), resume, saved directions"),
    "gudhi": ("gudhi", "the topology metric (persistent homology of a surface)"),
    "einconv": ("einconv", "KFAC / EKFAC (curvlinops) on convolutions"),
    "einops": ("einops", "KFAC / EKFAC (curvlinops)"),
    "linear_operator": ("linear_operator", "KFAC / EKFAC (curvlinops)"),
    "typer": ("typer", "the command line (lossatlas.cli)"),
}

#: the wheels --download fetches: the optional dependencies missing on the device image and theirs
WHEELS = ("zarr", "donfig", "google-crc32c", "numcodecs", "gudhi", "einconv")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")


def pinned(name: str) -> str:
    """``name==version`` from constraints.txt (the bare name where it is not pinned there)."""
    key = name.lower().replace("_", "-")
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        dist, _, version = line.partition("==")
        if dist.strip().lower().replace("_", "-") == key and version:
            return f"{name}=={version.strip()}"
    return name


def download(folder: str) -> int:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
           "--implementation", "cp", *(a for p in PLATFORMS for a in ("--platform", p)), "-d", folder,
           *(pinned(w) for w in WHEELS)]
    print(" ".join(cmd), flush=True)
    return subprocess.call(cmd)


def _version(module) -> str:
    return str(getattr(module, "__version__", "?"))


def check() -> int:
    """Print the torch/CUDA facts and each dependency's state; 1 when the checks cannot run."""
    import torch

    print(f"python {sys.version.split()[0]} ({sys.executable}); torch {torch.__version__}, "
          f"CUDA {torch.version.cuda}, cuda available: {torch.cuda.is_available()}")
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        print(f"device 0: {p.name}, {p.total_memory / 2**30:.0f} GiB, compute capability {p.major}.{p.minor}, "
              f"{p.multi_processor_count} SMs")
    missing = []
    for dist, (module, need) in DEPENDENCIES.items():
        try:
            mod = importlib.import_module(module)
            state = f"ok {_version(mod)}"
        except Exception as exc:  # noqa: BLE001 - an import that breaks is as missing as one that is absent
            state = f"MISSING ({type(exc).__name__})"
            missing += [dist] if need == CHECKS else []
        role = "needed by the checks" if need == CHECKS else f"not needed by the checks; used by {need}"
        print(f"  {dist:16s} {state:24s} {role}")
    try:
        import lossatlas

        print(f"import lossatlas: ok ({lossatlas.__file__})")
    except Exception as exc:  # noqa: BLE001
        print(f"import lossatlas: FAILED ({type(exc).__name__}: {exc})")
        return 1
    if missing:
        print(f"the checks cannot run without: {', '.join(missing)}")
        return 1
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--download", metavar="DIR", help="fetch the wheels of WHEELS into DIR instead of checking")
    args = ap.parse_args()
    return download(args.download) if args.download else check()


if __name__ == "__main__":
    sys.exit(main())
