"""The ctypes mirror of native/include/flash_attention.h, under the name the benchmark imports it by.

The mirror is generated (bindings/Generator, bindings/generate.rsp --python-output) into the Python package,
python/src/flash_attn_interop/_abi.py: one generated source of truth, which the package ships in its wheel. This
file is hand-written: it loads that module from its file (without importing the package, which needs nothing the
benchmark lacks but has no reason to be loaded here) and stands in for itself in sys.modules, so `import fa_abi`
gives the generated module (its __file__ included).
"""
import importlib.util
import os
import sys

_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                     "python", "src", "flash_attn_interop", "_abi.py")
_spec = importlib.util.spec_from_file_location(__name__, _PATH)
_module = importlib.util.module_from_spec(_spec)
sys.modules[__name__] = _module
_spec.loader.exec_module(_module)
