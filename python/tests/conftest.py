"""Shared by the CPU and GPU tests: the package imported from python/src (no install needed), the library found as
the package finds it (FLASH_ATTENTION_NATIVE_PATH, the package, artifacts/native/), and the `gpu` marker: a GPU test
skips, with the reason, where PyTorch, CUDA or the library is missing. Run the GPU tests with
`python3 -m pytest python/tests -m gpu`; without -m both kinds are collected."""
import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(os.path.dirname(HERE), "src")
REPO = os.path.dirname(os.path.dirname(HERE))
if SRC not in sys.path:
    sys.path.insert(0, SRC)


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs PyTorch with CUDA, a GPU and the native library")


def _gpu_skip_reason():
    try:
        import torch
    except ImportError as e:
        return f"PyTorch is not installed ({e})"
    if not torch.cuda.is_available():
        return "PyTorch sees no CUDA GPU"
    from flash_attn_interop import LibraryNotFoundError, load_library
    try:
        load_library()
    except LibraryNotFoundError as e:
        return str(e)
    return None


def pytest_collection_modifyitems(config, items):
    gpu_items = [i for i in items if i.get_closest_marker("gpu")]
    if not gpu_items:
        return
    reason = _gpu_skip_reason()
    if reason:
        for item in gpu_items:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def lib():
    """The loaded native library; CPU tests that need it skip (with the reason) where it is not built."""
    from flash_attn_interop import LibraryNotFoundError, load_library
    try:
        return load_library()
    except LibraryNotFoundError as e:
        pytest.skip(f"no native library: {e}")
