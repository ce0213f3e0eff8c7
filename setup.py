"""Builds pybench._C: the CPU kernels always, the CUDA kernels whenever nvcc and a CUDA build of torch are present.

Environment:
  PYBENCH_CPU_ONLY=1        skip the CUDA kernels even where they could be built
  TORCH_CUDA_ARCH_LIST      GPU architectures to compile for (default here: "8.0;9.0+PTX" when no GPU can be asked)
  CUDA_HOME                 toolkit root; found from nvcc on PATH when unset (wrapper scripts are followed)
  MAX_JOBS                  parallel compile jobs (ninja)
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).parent
DEFAULT_ARCHS = "8.0;9.0+PTX"  # A100 and H100/H200; PTX lets newer GPUs JIT the kernels


def _toolkit_root() -> str | None:
    """CUDA_HOME, or the toolkit whose nvcc the nvcc on PATH runs (it may be a script that execs the real one)."""
    if os.environ.get("CUDA_HOME"):
        return os.environ["CUDA_HOME"]
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    nvcc = os.path.realpath(nvcc)
    try:
        head = Path(nvcc).read_bytes()[:4096]
    except OSError:
        return None
    if head.startswith(b"#!"):  # a wrapper script: follow its exec line to the real compiler
        match = re.search(rb"exec\s+(\S+/nvcc)\b", head)
        if match is None:
            return None
        nvcc = os.path.realpath(match.group(1).decode())
    return str(Path(nvcc).parent.parent)


def _want_cuda() -> bool:
    if os.environ.get("PYBENCH_CPU_ONLY", "0") not in ("", "0"):
        print("pybench: PYBENCH_CPU_ONLY is set: building the CPU kernels only")
        return False
    root = _toolkit_root()
    if root is None or not (Path(root) / "bin" / "nvcc").exists():
        print("pybench: no nvcc found: building the CPU kernels only")
        return False
    os.environ["CUDA_HOME"] = root  # must be set before torch.utils.cpp_extension is imported
    return True


WITH_CUDA = _want_cuda()

import torch  # noqa: E402
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402

if WITH_CUDA and torch.version.cuda is None:
    print("pybench: torch is a CPU-only build: building the CPU kernels only")
    WITH_CUDA = False
if WITH_CUDA and not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
    os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_ARCHS  # torch cannot ask a GPU which arch it is

# clone.cpp is plain CPython (the module init and the clone walk): a TU that compiles in seconds
cpu_sources = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc" / "cpu").glob("*.cpp"))
sources = ["csrc/ops.cpp", "csrc/clone.cpp", *cpu_sources]
# torch picks the C++ standard: C++20 for 2.14, C++17 for 2.11 (the GPU machines' torch): keep csrc/ C++17
cxx_flags = ["-O3", "-fopenmp"]
if WITH_CUDA:
    sources += sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc" / "cuda").glob("*.cu"))
    ext = CUDAExtension(
        "pybench._C",
        sources,
        extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "--use_fast_math"]},
        extra_link_args=["-fopenmp"],
    )
else:
    ext = CppExtension("pybench._C", sources, extra_compile_args=cxx_flags, extra_link_args=["-fopenmp"])
print(f"pybench: building pybench._C with {'CPU + CUDA' if WITH_CUDA else 'CPU'} kernels from {len(sources)} files")

setup(ext_modules=[ext], cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)})
