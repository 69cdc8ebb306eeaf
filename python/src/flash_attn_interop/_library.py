"""Finding and loading libflash_attention.so, the library's errors as Python exceptions, and one context per device.

Nothing here imports torch or touches a GPU: loading the library only dlopens it (the CUDA driver is first used by
fa_context_create, when a call needs a context).
"""
import ctypes
import functools
import os
import threading

from . import _abi

LIB_NAME = "libflash_attention.so"
ENV_PATH = "FLASH_ATTENTION_NATIVE_PATH"
_PKG_DIR = os.path.dirname(os.path.abspath(__file__))

# Exports the package calls; a library that lacks one is refused at load (it predates the ABI the mirror describes).
REQUIRED_EXPORTS = ("fa_status_string", "fa_last_error_message", "fa_version", "fa_device_count",
                    "fa_context_create", "fa_context_destroy", "fa_context_check", "fa_forward_params_init", "fa_forward_check",
                    "fa_forward", "fa_backward_params_init", "fa_backward_check", "fa_backward_workspace_size",
                    "fa_backward", "fa_decode_params_init", "fa_decode_check", "fa_decode_workspace_size",
                    "fa_decode")

STATUS_NAMES = {
    _abi.FA_STATUS_SUCCESS: "FA_STATUS_SUCCESS",
    _abi.FA_STATUS_INVALID_ARGUMENT: "FA_STATUS_INVALID_ARGUMENT",
    _abi.FA_STATUS_UNSUPPORTED: "FA_STATUS_UNSUPPORTED",
    _abi.FA_STATUS_NO_DEVICE: "FA_STATUS_NO_DEVICE",
    _abi.FA_STATUS_OUT_OF_MEMORY: "FA_STATUS_OUT_OF_MEMORY",
    _abi.FA_STATUS_CUDA_ERROR: "FA_STATUS_CUDA_ERROR",
    _abi.FA_STATUS_INTERNAL: "FA_STATUS_INTERNAL",
    _abi.FA_STATUS_DEVICE_CHECK_FAILED: "FA_STATUS_DEVICE_CHECK_FAILED",
}


class FlashAttentionError(RuntimeError):
    """A call into libflash_attention failed. status is the fa_status_t value, status_name its C name, message the
    library's own text (fa_last_error_message), function the fa_* function that failed."""

    def __init__(self, function, status, status_name, message):
        self.function = function
        self.status = int(status)
        self.status_name = status_name
        self.message = message
        super().__init__(f"{function} failed with {status_name}: {message}")


class LibraryNotFoundError(FlashAttentionError, OSError):
    """libflash_attention.so could not be found or loaded; the message lists every place tried."""

    def __init__(self, message):
        self.function = None
        self.status = None
        self.status_name = None
        self.message = message
        RuntimeError.__init__(self, message)


def candidate_paths(environ=None):
    """Where the library is looked for, in order, as (where it comes from, path): FLASH_ATTENTION_NATIVE_PATH (a file,
    or a folder holding libflash_attention.so) when set, and then nothing else (a library asked for by name that
    does not load is an error, never replaced by another one); otherwise the copy inside the installed package (a
    wheel), then the build tree's artifacts/native/ (this package run from a checkout, python/src/)."""
    env = os.environ if environ is None else environ
    p = env.get(ENV_PATH)
    if p:
        p = os.path.abspath(p)
        return [(ENV_PATH, os.path.join(p, LIB_NAME) if os.path.isdir(p) else p)]
    out = []
    out.append(("the package", os.path.join(_PKG_DIR, LIB_NAME)))
    repo = os.path.dirname(os.path.dirname(os.path.dirname(_PKG_DIR)))  # python/src/flash_attn_interop -> repo
    out.append(("the build tree", os.path.join(repo, "artifacts", "native", LIB_NAME)))
    return out


class Library:
    """One loaded libflash_attention (its own ctypes.CDLL, the mirror's prototypes bound) and its contexts."""

    def __init__(self, path):
        self.path = path
        self.lib = ctypes.CDLL(path)
        missing = _abi.bind(self.lib)
        lacking = [n for n in REQUIRED_EXPORTS if n in missing]
        if lacking:
            raise LibraryNotFoundError(f"{path} does not export {', '.join(lacking)}: it is older than the C ABI "
                                       f"{_abi.FA_VERSION_MAJOR}.{_abi.FA_VERSION_MINOR} this package was built for")
        self.version = int(self.lib.fa_version())
        major = self.version // 10000
        if major != _abi.FA_VERSION_MAJOR or self.version < _abi.FA_VERSION_CODE:
            raise LibraryNotFoundError(f"{path} is C ABI version code {self.version}; this package needs "
                                       f"{_abi.FA_VERSION_CODE} or a later {_abi.FA_VERSION_MAJOR}.x")
        self._contexts = {}
        self._lock = threading.Lock()
        # Each params struct filled once by its fa_*_params_init; a call copies it (cheaper than calling init).
        self._templates = {}
        for kind, cls in (("forward", _abi.FaForwardParams), ("backward", _abi.FaBackwardParams),
                          ("decode", _abi.FaDecodeParams)):
            p = cls()
            self.check(f"fa_{kind}_params_init",
                       getattr(self.lib, f"fa_{kind}_params_init")(ctypes.byref(p), ctypes.sizeof(p)))
            self._templates[kind] = (cls, bytes(p))
        cls, raw = self._templates["forward"]
        self.new_forward_params = functools.partial(cls.from_buffer_copy, raw)  # new_params("forward"), per call

    def new_params(self, kind):
        """A fresh params struct of kind "forward", "backward" or "decode" holding fa_*_params_init's defaults."""
        cls, raw = self._templates[kind]
        return cls.from_buffer_copy(raw)

    def error(self, function, status):
        """The FlashAttentionError for a failed call (read on the calling thread, right after the call)."""
        name = STATUS_NAMES.get(int(status))
        if name is None:
            raw = self.lib.fa_status_string(int(status))
            name = raw.decode() if raw else f"status {int(status)}"
        raw = self.lib.fa_last_error_message()
        message = raw.decode(errors="replace") if raw else ""
        return FlashAttentionError(function, status, name, message or "(the library gave no message)")

    def check(self, function, status):
        if status != 0:
            raise self.error(function, status)

    def device_count(self):
        n = ctypes.c_int32(0)
        st = self.lib.fa_device_count(ctypes.byref(n))
        return n.value if st == 0 else 0

    def context(self, device):
        """The context of CUDA device ordinal `device`, created on first use and kept for the process."""
        ctx = self._contexts.get(device)
        if ctx is not None:
            return ctx
        with self._lock:
            ctx = self._contexts.get(device)
            if ctx is None:
                c = ctypes.c_void_p()
                self.check("fa_context_create", self.lib.fa_context_create(int(device), ctypes.byref(c)))
                ctx = self._contexts[device] = c
        return ctx


_library = None
_load_lock = threading.Lock()


def load_library(path=None):
    """The process's Library: the one at `path` when given (replacing any loaded before), else the first that loads
    of candidate_paths(). Raises LibraryNotFoundError naming every place tried."""
    global _library
    with _load_lock:
        if path is not None:
            _library = Library(os.path.abspath(path))
            return _library
        if _library is not None:
            return _library
        tried = []
        for where, p in candidate_paths():
            if not os.path.exists(p):
                tried.append(f"{p} ({where}: no such file)")
                continue
            try:
                _library = Library(p)
                return _library
            except LibraryNotFoundError as e:
                tried.append(f"{p} ({where}: {e})")
            except OSError as e:
                tried.append(f"{p} ({where}: {e})")
        raise LibraryNotFoundError(
            f"cannot load {LIB_NAME}; tried: " + "; ".join(tried)
            + f". Set {ENV_PATH} to the library (or its folder), install the wheel built by './build.sh wheel', "
              "or build the library with './build.sh build'.")
