"""What a PyTorch baseline runs on, for bench/torch_matmul.py and bench/torch_llama.py: the version, its build
configuration (torch.__config__.show(): BLAS_INFO, oneDNN), its threads (torch.__config__.parallel_info(),
torch.get_num_threads()) and the BLAS and LAPACK libraries this process has loaded (from /proc/self/maps): with
BLAS_INFO=generic, as Debian builds python3-torch, the configuration names only the interface (libblas.so.3),
and which library serves it (OpenBLAS, or the slow reference BLAS) is decided at run time by the system's
alternatives. bench/_torch_blas.ts reads this and refuses a ratio against the reference BLAS."""
import ctypes
import re

import torch


def loaded_libraries():
    """Paths of the BLAS, LAPACK and oneDNN libraries mapped into this process (empty where /proc is not)."""
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "/" in line}
    except OSError:
        return []
    pattern = re.compile(r"blas|lapack|mkl|blis|atlas|dnnl|accelerate", re.IGNORECASE)
    return sorted(p for p in paths if pattern.search(p.rsplit("/", 1)[-1]))


def blas_threads(libraries):
    """OpenBLAS's own thread count where OpenBLAS is loaded (it keeps a pool of its own), else None."""
    for path in libraries:
        if "openblas" in path:
            try:
                return int(ctypes.CDLL(path).openblas_get_num_threads())
            except (OSError, AttributeError):
                pass
    return None


def torch_info():
    """The baseline's description, after torch.set_num_threads (call it then)."""
    a = torch.randn(8, 8)
    a @ a  # a BLAS call, so that a library loaded on first use is mapped too
    libraries = loaded_libraries()
    return {
        "version": torch.__version__,
        "config": torch.__config__.show(),
        "parallel": torch.__config__.parallel_info(),
        "threads": torch.get_num_threads(),
        "libraries": libraries,
        "blasThreads": blas_threads(libraries),
    }
