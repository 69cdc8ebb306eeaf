"""The generated ctypes mirror (flash_attn_interop/_abi.py) against the C header, read here independently of the
generator: every struct's fields in order, every integer macro and enum value, every export."""
import ctypes
import os
import re

from conftest import REPO
from flash_attn_interop import _abi

HEADER = os.path.join(REPO, "native", "include", "flash_attention.h")


def header_text():
    with open(HEADER) as f:
        return f.read()


def strip_comments(text):
    return re.sub(r"/\*.*?\*/", "", text, flags=re.S)


def test_layout_matches_libclang():
    _abi.check_layout()
    assert ctypes.sizeof(_abi.FaTensor) == 80
    assert ctypes.sizeof(_abi.FaForwardParams) == _abi.LAYOUT[_abi.FaForwardParams][0]
    # 0.7 appended sinks and dsinks, 0.8 alibi_slopes, 0.9 the dropout block (p, reserved2, seed, offset, two pointers)
    assert ctypes.sizeof(_abi.FaBackwardParams) == 824 + 3 * 80 + 40
    assert _abi.FaBackwardParams.alibi_slopes.offset == 824 + 2 * 80
    assert _abi.FaBackwardParams.dropout_p.offset == 824 + 3 * 80
    # the forward's 0.9 block: p, reserved3, seed, offset, three pointers and the keep mask (128 bytes) after 888;
    # 0.11 appended block_table (paged K/V, 80 bytes) after it
    assert _abi.FaForwardParams.dropout_p.offset == 888
    assert _abi.FaForwardParams.block_table.offset == 888 + 128
    assert ctypes.sizeof(_abi.FaForwardParams) == 888 + 128 + 80
    # the support query: 14 int32 through 0.10 (head_dim_v last), 0.11 appended paged_kv, 0.13 kv_cache_dtype
    assert _abi.FaSupportQuery.head_dim_v.offset == 52 and _abi.FaSupportQuery.paged_kv.offset == 56
    assert _abi.FaSupportQuery.kv_cache_dtype.offset == 60
    assert ctypes.sizeof(_abi.FaSupportQuery) == 64
    # 784 bytes through 0.6; 0.7 appended the serving fields (cache_batch_idx on) there (960 bytes); 0.8 alibi_slopes
    # (80 bytes), then the rotary block (rotary_cos .. reserved1, 32 bytes); 0.12 the per-sequence counts
    # (cu_seqlens_q, cu_seqlens_k_new, their host copies, max_seqlen_q, reserved2: 80 + 80 + 16 + 8 bytes); 0.13 the
    # fp8 cache's k_descale and v_descale (two tensors, 160 bytes).
    assert _abi.FaDecodeParams.cu_seqlens_q.offset == 960 + 80 + 32
    assert _abi.FaDecodeParams.k_descale.offset == 960 + 80 + 32 + 184
    assert _abi.FaDecodeParams.v_descale.offset == 960 + 80 + 32 + 184 + 80
    assert ctypes.sizeof(_abi.FaDecodeParams) == 960 + 80 + 32 + 184 + 160
    assert _abi.FaDecodeParams.cache_batch_idx.offset == 784
    assert _abi.FaDecodeParams.alibi_slopes.offset == 960
    assert _abi.FaDecodeParams.rotary_cos.offset == 960 + 80


def test_struct_fields_follow_the_header():
    text = strip_comments(header_text())
    structs = re.findall(r"typedef struct (\w+) \{(.*?)\}\s*(\w+);", text, flags=re.S)
    assert len(structs) >= 6
    for _, body, typedef in structs:
        cls = getattr(_abi, typedef)
        names = re.findall(r"(\w+)(?:\[\w+\])?\s*;", body)
        assert [f[0] for f in cls._fields_] == names, typedef


def test_macros_and_enums_match():
    text = header_text()
    for name, value in re.findall(r"#define (FA_[A-Z_]+) (\d+)\s", text):
        assert getattr(_abi, name) == int(value), name
    for name, value in re.findall(r"^\s+(FA_[A-Z0-9_]+) = (\d+)", text, flags=re.M):
        assert getattr(_abi, name) == int(value), name
    assert _abi.FA_VERSION_CODE == _abi.FA_VERSION_MAJOR * 10000 + _abi.FA_VERSION_MINOR * 100 + _abi.FA_VERSION_PATCH


def test_every_export_has_a_prototype():
    exports = set(re.findall(r"FA_API\s+[^;(]*?\b(fa_\w+)\s*\(", header_text()))
    assert exports and exports == set(_abi.PROTOTYPES)


def test_the_package_version_is_the_abi_version():
    import flash_attn_interop
    assert flash_attn_interop.__version__ == f"{_abi.FA_VERSION_MAJOR}.{_abi.FA_VERSION_MINOR}.{_abi.FA_VERSION_PATCH}"
    with open(os.path.join(REPO, "python", "pyproject.toml")) as f:
        assert f'version = "{flash_attn_interop.__version__}"' in f.read()
