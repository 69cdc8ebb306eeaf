"""The flash-attn 2.x surface without a GPU: names, argument names and defaults; every unserved option refused with a
message that says so, before torch is touched; argument mapping into the params structs; and the library's own
validation (fa_forward_check, fa_backward_check, fa_decode_check) of what the mapping produces, on host-side
descriptors with fake device pointers that are never dereferenced."""
import ctypes
import inspect
import os
import subprocess
import sys

import pytest

import flash_attn_interop as fai
from _support import fp8_kernels, pair_kernels, sm90a
from conftest import SRC
from flash_attn_interop import FlashAttentionError, UnsupportedArgumentError, _abi, _args

# flash-attn 2.x (flash_attn/flash_attn_interface.py, 2.6+): positional names and defaults, in order.
W = (-1, -1)
FLASH_ATTN_SIGNATURES = {
    "flash_attn_func": [("q",), ("k",), ("v",), ("dropout_p", 0.0), ("softmax_scale", None), ("causal", False),
                        ("window_size", W), ("softcap", 0.0), ("alibi_slopes", None), ("deterministic", False),
                        ("return_attn_probs", False)],
    "flash_attn_qkvpacked_func": [("qkv",), ("dropout_p", 0.0), ("softmax_scale", None), ("causal", False),
                                  ("window_size", W), ("softcap", 0.0), ("alibi_slopes", None),
                                  ("deterministic", False), ("return_attn_probs", False)],
    "flash_attn_kvpacked_func": [("q",), ("kv",), ("dropout_p", 0.0), ("softmax_scale", None), ("causal", False),
                                 ("window_size", W), ("softcap", 0.0), ("alibi_slopes", None),
                                 ("deterministic", False), ("return_attn_probs", False)],
    "flash_attn_varlen_func": [("q",), ("k",), ("v",), ("cu_seqlens_q",), ("cu_seqlens_k",), ("max_seqlen_q",),
                               ("max_seqlen_k",), ("dropout_p", 0.0), ("softmax_scale", None), ("causal", False),
                               ("window_size", W), ("softcap", 0.0), ("alibi_slopes", None), ("deterministic", False),
                               ("return_attn_probs", False), ("block_table", None)],
    "flash_attn_varlen_qkvpacked_func": [("qkv",), ("cu_seqlens",), ("max_seqlen",), ("dropout_p", 0.0),
                                         ("softmax_scale", None), ("causal", False), ("window_size", W),
                                         ("softcap", 0.0), ("alibi_slopes", None), ("deterministic", False),
                                         ("return_attn_probs", False)],
    "flash_attn_varlen_kvpacked_func": [("q",), ("kv",), ("cu_seqlens_q",), ("cu_seqlens_k",), ("max_seqlen_q",),
                                        ("max_seqlen_k",), ("dropout_p", 0.0), ("softmax_scale", None),
                                        ("causal", False), ("window_size", W), ("softcap", 0.0),
                                        ("alibi_slopes", None), ("deterministic", False),
                                        ("return_attn_probs", False)],
    "flash_attn_with_kvcache": [("q",), ("k_cache",), ("v_cache",), ("k", None), ("v", None), ("rotary_cos", None),
                                ("rotary_sin", None), ("cache_seqlens", None), ("cache_batch_idx", None),
                                ("cache_leftpad", None), ("block_table", None), ("softmax_scale", None),
                                ("causal", False), ("window_size", W), ("softcap", 0.0),
                                ("rotary_interleaved", True), ("alibi_slopes", None), ("num_splits", 0),
                                ("return_softmax_lse", False)],
}


@pytest.mark.parametrize("name", sorted(FLASH_ATTN_SIGNATURES))
def test_signature_is_flash_attn(name):
    params = [p for p in inspect.signature(getattr(fai, name)).parameters.values()
              if p.kind is p.POSITIONAL_OR_KEYWORD]
    got = [(p.name,) if p.default is p.empty else (p.name, p.default) for p in params]
    assert got == FLASH_ATTN_SIGNATURES[name]
    # Extensions are keyword-only, so flash-attn's positional calls mean the same here: causal_alignment,
    # FlashAttention-3's fp8 descales (default None) on every function with an fp8 forward, and the learnable sinks
    # (sinks, or FlashAttention-4's name learnable_sink).
    kw = {p.name: p.default for p in inspect.signature(getattr(fai, name)).parameters.values()
          if p.kind is p.KEYWORD_ONLY}
    if name == "flash_attn_with_kvcache":
        # FlashAttention-3's per-sequence counts (C ABI 0.12) and an fp8 cache's descales (C ABI 0.13), keyword-only
        # as FA3 passes them by name.
        assert kw == {"cu_seqlens_q": None, "cu_seqlens_k_new": None, "max_seqlen_q": None, "k_descale": None,
                      "v_descale": None}
    else:
        assert kw == {"causal_alignment": "bottom_right", "q_descale": None, "k_descale": None, "v_descale": None,
                      "sinks": None, "learnable_sink": None}


# ---- refusals: raised before torch is imported (these run with torch absent or present) --------------------------

X = object()  # stands for a tensor: the refusal comes before any tensor is looked at

REFUSED = [
    ("flash_attn_func", (X, X, X), {"softmax_scale": 0.0}, "softmax_scale=0.0"),
    # (C ABI 0.11 serves block_table; fp8 with it is refused: the paged K/V forward serves fp16 and bf16.)
    ("flash_attn_varlen_func", (X, X, X, X, X, 8, 8), {"block_table": X, "q_descale": X}, "block_table"),
]


@pytest.mark.parametrize("name,args,kwargs,what", REFUSED, ids=[f"{r[0]}-{r[3]}" for r in REFUSED])
def test_unserved_arguments_are_refused(name, args, kwargs, what):
    with pytest.raises(UnsupportedArgumentError) as ei:
        getattr(fai, name)(*args, **kwargs)
    msg = str(ei.value)
    assert msg.startswith(name + ":") and what in msg and "not served" in msg
    assert isinstance(ei.value, NotImplementedError)


INVALID = [
    ("flash_attn_func", {"window_size": (-2, 0)}, "window_size left must be >= -1"),
    ("flash_attn_func", {"window_size": 5}, "window_size must be a pair"),
    ("flash_attn_func", {"window_size": (1.5, 0)}, "must be an int"),
    ("flash_attn_func", {"softcap": float("nan")}, "softcap must be finite"),
    ("flash_attn_func", {"softcap": float("inf")}, "softcap must be finite"),
    ("flash_attn_func", {"softcap": float("-inf")}, "softcap must be finite"),
    ("flash_attn_func", {"softmax_scale": float("inf")}, "softmax_scale must be finite"),
    ("flash_attn_func", {"causal_alignment": "middle"}, "causal_alignment must be one of"),
    ("flash_attn_func", {"dropout_p": 1.0}, r"dropout_p is 1.0; it must be in \[0, 1\)"),
    ("flash_attn_func", {"dropout_p": -0.1}, r"dropout_p is -0.1; it must be in \[0, 1\)"),
    ("flash_attn_func", {"dropout_p": float("nan")}, r"dropout_p is nan; it must be in \[0, 1\)"),
    ("flash_attn_func", {"dropout_p": 2}, r"dropout_p is 2; it must be in \[0, 1\)"),
]


@pytest.mark.parametrize("name,kwargs,what", INVALID, ids=[i[2] for i in INVALID])
def test_invalid_arguments(name, kwargs, what):
    with pytest.raises(ValueError, match=what):
        getattr(fai, name)(X, X, X, **kwargs)


def test_dropout_p_float32_rounding():
    from flash_attn_interop import _args
    assert _args.dropout_arg("f", 0.17) == pytest.approx(0.17, rel=1e-7)  # the float32 the C ABI reads
    assert _args.dropout_arg("f", 1 - 2 ** -24) < 1.0  # the largest float32 below 1 passes
    with pytest.raises(ValueError, match="it must be in"):
        _args.dropout_arg("f", 1 - 2 ** -30)  # below 1 as a double, 1.0 as the float32 the library reads


@pytest.mark.parametrize("bad", ["0.1", True, None], ids=["str", "bool", "None"])
def test_dropout_p_must_be_a_number(bad):
    with pytest.raises(TypeError, match="dropout_p must be a float in"):
        fai.flash_attn_func(X, X, X, dropout_p=bad)


def test_kvcache_argument_checks():
    with pytest.raises(ValueError, match="num_splits must be 0"):
        fai.flash_attn_with_kvcache(X, X, X, num_splits=_abi.FA_DECODE_MAX_SPLITS + 1)
    with pytest.raises(ValueError, match="k and v are given together"):
        fai.flash_attn_with_kvcache(X, X, X, k=X)
    with pytest.raises(ValueError, match="needs cache_seqlens"):
        fai.flash_attn_with_kvcache(X, X, X, k=X, v=X)
    # Rotary (0.8): both tables, and only with k/v (flash-attn raises too); checked before any tensor is looked at.
    with pytest.raises(ValueError, match="rotary_cos and rotary_sin are given together"):
        fai.flash_attn_with_kvcache(X, X, X, rotary_cos=X)
    with pytest.raises(ValueError, match="rotary_cos/rotary_sin need k and v"):
        fai.flash_attn_with_kvcache(X, X, X, rotary_cos=X, rotary_sin=X, cache_seqlens=X)


def test_mapping_helpers():
    assert _args.softmax_scale_arg("f", None) == 0.0
    assert _args.softmax_scale_arg("f", 0.125) == 0.125
    assert _args.softcap_arg("f", 0.0) == 0.0 and _args.softcap_arg("f", -3.0) == 0.0  # <= 0 is off (flash-attn)
    assert _args.softcap_arg("f", 30) == 30.0
    assert _args.window_arg("f", (-1, -1)) == (-1, -1)
    assert _args.window_arg("f", [128, 0]) == (128, 0)
    assert _args.window_arg("f", (2**40, 3)) == (-1, 3)  # wider than any sequence: unbounded
    assert _args.causal_alignment_arg("f", "bottom_right") == _abi.FA_CAUSAL_BOTTOM_RIGHT
    assert _args.causal_alignment_arg("f", "top_left") == _abi.FA_CAUSAL_TOP_LEFT
    assert _args.num_splits_arg("f", 0) == 0 and _args.num_splits_arg("f", 1) == 1


def test_a_call_without_torch_says_torch_is_needed():
    code = ("import sys; sys.modules['torch'] = None\nimport flash_attn_interop as f\n"
            "try:\n    f.flash_attn_func(1, 2, 3)\nexcept ImportError as e:\n    print(e)\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, PYTHONPATH=SRC))
    assert p.returncode == 0, p.stderr
    assert "flash_attn_interop needs PyTorch" in p.stdout


def test_a_call_on_cpu_tensors_says_cuda_is_needed():
    torch = pytest.importorskip("torch", reason="PyTorch is not installed")
    q = torch.zeros(1, 8, 2, 64, dtype=torch.float16)
    with pytest.raises(RuntimeError, match="runs on CUDA tensors only"):
        fai.flash_attn_func(q, q, q)


# ---- the library's checks of what the mapping builds (fake device pointers, never dereferenced) --------------------

class Fake:
    """Contiguous TensorDescs at distinct, aligned, fake device addresses."""

    def __init__(self):
        self.next = 0x7F0000000000

    def __call__(self, shape, dtype=_abi.FA_DTYPE_FLOAT16):
        strides = [1] * len(shape)
        for i in range(len(shape) - 2, -1, -1):
            strides[i] = strides[i + 1] * shape[i + 1]
        self.next += 1 << 32
        return _args.TensorDesc(self.next, dtype, tuple(shape), tuple(strides))


F32, I32, BF16 = _abi.FA_DTYPE_FLOAT32, _abi.FA_DTYPE_INT32, _abi.FA_DTYPE_BFLOAT16


def fwd(lib, fake, b=2, sq=128, sk=256, h=8, hkv=2, d=64, **kw):
    return _args.forward_params(lib, fake((b, sq, h, d)), fake((b, sk, hkv, d)), fake((b, sk, hkv, d)),
                                fake((b, sq, h, d)), fake((b, h, sq), F32), **kw)


def check_status(lib, kind, params, cc=80):
    try:
        _args.check(lib, kind, params, cc)
        return 0, ""
    except FlashAttentionError as e:
        return e.status, e.message


@pytest.mark.parametrize("options", [
    {}, {"causal": True}, {"causal": True, "causal_alignment": _abi.FA_CAUSAL_TOP_LEFT},
    {"window": (16, 0)}, {"window": (32, 8), "softcap": 30.0}, {"softmax_scale": 0.1},
], ids=["plain", "causal", "causal-top-left", "window", "window-softcap", "scale"])
def test_forward_options_pass_the_library_check(lib, options):
    fake = Fake()
    p = fwd(lib, fake, **options)
    assert check_status(lib, "forward", p) == (0, "")
    for k, v in options.items():
        if k == "window":
            assert (p.window_left, p.window_right) == v
        elif k == "causal":
            assert p.causal == 1
        else:
            assert getattr(p, k) == pytest.approx(v)


def test_forward_descriptor_fields(lib):
    fake = Fake()
    q = fake((2, 128, 8, 64))
    p = _args.forward_params(lib, q, fake((2, 256, 2, 64)), fake((2, 256, 2, 64)), fake((2, 128, 8, 64)))
    assert p.q.data == q.data and p.q.rank == 4 and list(p.q.shape) == [2, 128, 8, 64]
    assert list(p.q.strides) == list(q.strides)
    assert p.lse.data is None and p.lse.rank == 0  # not given: a zeroed descriptor


def test_strided_views_of_a_packed_buffer_pass(lib):
    fake = Fake()
    b, s, h, d = 2, 64, 4, 64
    base = fake((b, s, 3, h, d))
    strides = (s * 3 * h * d, 3 * h * d, d, 1)  # qkv[:, :, i] of a contiguous [b, s, 3, h, d] buffer
    q, k, v = (_args.TensorDesc(base.data + i * h * d * 2, base.dtype, (b, s, h, d), strides) for i in range(3))
    p = _args.forward_params(lib, q, k, v, fake((b, s, h, d)))
    assert check_status(lib, "forward", p) == (0, "")


@pytest.mark.parametrize("case,status,words", [
    ("gqa-not-dividing", _abi.FA_STATUS_INVALID_ARGUMENT, "heads"),
    ("lse-fp16", _abi.FA_STATUS_INVALID_ARGUMENT, "lse"),
    ("misaligned", _abi.FA_STATUS_INVALID_ARGUMENT, "aligned"),
    ("last-dim-strided", _abi.FA_STATUS_INVALID_ARGUMENT, "stride"),
    ("dtype-mismatch", _abi.FA_STATUS_INVALID_ARGUMENT, "dtype"),
    ("head-dim-512", _abi.FA_STATUS_UNSUPPORTED, "head"),
    ("sm75", _abi.FA_STATUS_UNSUPPORTED, "compute capability"),
])
def test_forward_errors_carry_the_library_message(lib, case, status, words):
    fake = Fake()
    cc = 80
    q, k, v, o, lse = fake((2, 64, 8, 64)), fake((2, 64, 2, 64)), fake((2, 64, 2, 64)), fake((2, 64, 8, 64)), None
    if case == "gqa-not-dividing":
        k, v = fake((2, 64, 3, 64)), fake((2, 64, 3, 64))
    elif case == "lse-fp16":
        lse = fake((2, 8, 64))
    elif case == "misaligned":
        q = q._replace(data=q.data + 2)
    elif case == "last-dim-strided":
        q = q._replace(strides=q.strides[:3] + (2,))
    elif case == "dtype-mismatch":
        q = q._replace(dtype=BF16)
    elif case == "head-dim-512":
        q, k, v, o = fake((2, 64, 8, 512)), fake((2, 64, 2, 512)), fake((2, 64, 2, 512)), fake((2, 64, 8, 512))
    elif case == "sm75":
        cc = 75
    got, msg = check_status(lib, "forward", _args.forward_params(lib, q, k, v, o, lse), cc)
    assert got == status, msg
    assert words in msg.lower()


def test_varlen_forward_and_backward_pass(lib):
    fake = Fake()
    cu_q, cu_k = 0x7E0000000000, 0x7E0000001000
    varlen = (cu_q, cu_k, 3, 128, 200)
    q, k, v, o = fake((300, 8, 64)), fake((400, 2, 64)), fake((400, 2, 64)), fake((300, 8, 64))
    lse = fake((8, 300), F32)
    p = _args.forward_params(lib, q, k, v, o, lse, causal=True, varlen=varlen)
    assert check_status(lib, "forward", p) == (0, "")
    assert (p.varlen_batch, p.max_seqlen_q, p.max_seqlen_k) == (3, 128, 200)
    assert ctypes_addr(p.cu_seqlens_q) == cu_q and ctypes_addr(p.cu_seqlens_k) == cu_k
    assert not p.cu_seqlens_q_host  # no host copies: no synchronisation
    b = _args.backward_params(lib, q, k, v, o, fake((300, 8, 64)), lse, fake((300, 8, 64)), fake((400, 2, 64)),
                              fake((400, 2, 64)), causal=True, deterministic=True, varlen=varlen)
    assert check_status(lib, "backward", b) == (0, "")
    assert b.deterministic == 1


def ctypes_addr(ptr):
    import ctypes
    return ctypes.cast(ptr, ctypes.c_void_p).value


def test_backward_check(lib):
    fake = Fake()
    shapes = [(2, 128, 8, 64), (2, 256, 2, 64), (2, 256, 2, 64), (2, 128, 8, 64), (2, 128, 8, 64)]
    q, k, v, o, do = (fake(s) for s in shapes)
    grads = [fake(s) for s in shapes[:3]]
    lse = fake((2, 8, 128), F32)
    p = _args.backward_params(lib, q, k, v, o, do, lse, *grads, causal=True, window=(64, 0), softcap=20.0)
    assert check_status(lib, "backward", p) == (0, "")
    p = _args.backward_params(lib, q, k, v, o, do, None, *grads)
    status, msg = check_status(lib, "backward", p)
    assert status == _abi.FA_STATUS_INVALID_ARGUMENT and "lse" in msg


def test_decode_check(lib):
    fake = Fake()
    q, out = fake((4, 1, 8, 64)), fake((4, 1, 8, 64))
    cache_seqlens = fake((4,), I32)
    # Paged, block 16.
    p = _args.decode_params(lib, q, fake((64, 16, 2, 64)), fake((64, 16, 2, 64)), out, cache_seqlens,
                            block_table=fake((4, 16), I32), lse=fake((4, 8, 1), F32), num_splits=4)
    assert check_status(lib, "decode", p) == (0, "")
    assert p.advance_cache_seqlens == 0  # flash-attn's convention: cache_seqlens is only read
    # Contiguous, appending one token, causal, window, softcap.
    p = _args.decode_params(lib, q, fake((4, 1024, 2, 64)), fake((4, 1024, 2, 64)), out, cache_seqlens,
                            k_new=fake((4, 1, 2, 64)), v_new=fake((4, 1, 2, 64)), causal=True, window=(256, 0),
                            softcap=10.0)
    assert check_status(lib, "decode", p) == (0, "")
    # Block size 24 is not served.
    p = _args.decode_params(lib, q, fake((64, 24, 2, 64)), fake((64, 24, 2, 64)), out, cache_seqlens,
                            block_table=fake((4, 16), I32))
    status, msg = check_status(lib, "decode", p)
    assert status == _abi.FA_STATUS_UNSUPPORTED and "block" in msg


def test_decode_check_per_sequence_counts(lib):
    """cu_seqlens_q / cu_seqlens_k_new (C ABI 0.12): packed q, out, lse and k/v are accepted; max_seqlen_q is required
    with cu_seqlens_q and refused without it."""
    fake = Fake()
    q, out, lse = fake((9, 8, 64)), fake((9, 8, 64)), fake((8, 9), F32)
    seqlens, cuq, cuk = fake((4,), I32), fake((5,), I32), fake((5,), I32)
    kc = fake((4, 256, 2, 64))
    p = _args.decode_params(lib, q, kc, fake((4, 256, 2, 64)), out, seqlens, lse=lse, k_new=fake((7, 2, 64)),
                            v_new=fake((7, 2, 64)), causal=True, cu_seqlens_q=cuq, cu_seqlens_k_new=cuk, max_seqlen_q=4)
    assert check_status(lib, "decode", p) == (0, "")
    p = _args.decode_params(lib, q, kc, fake((4, 256, 2, 64)), out, seqlens, cu_seqlens_q=cuq)
    status, msg = check_status(lib, "decode", p)
    assert status == _abi.FA_STATUS_INVALID_ARGUMENT and "max_seqlen_q is 0 with cu_seqlens_q" in msg
    p = _args.decode_params(lib, q, kc, fake((4, 256, 2, 64)), out, seqlens, lse=fake((4, 8, 9), F32),
                            cu_seqlens_q=cuq, max_seqlen_q=4)
    status, msg = check_status(lib, "decode", p)
    assert status == _abi.FA_STATUS_INVALID_ARGUMENT and "lse.rank is 3" in msg


def test_decode_check_serving_options(lib):
    """cache_batch_idx over a larger pool (contiguous rows, block-table rows), cache_leftpad (with paging too), and
    k/v of another seqlen than q are accepted (C ABI 0.7); bad descriptors of the new arrays are refused by name."""
    fake = Fake()
    q, out = fake((4, 2, 8, 64)), fake((4, 2, 8, 64))
    seqlens, idx, pads = fake((4,), I32), fake((4,), I32), fake((4,), I32)
    for snew in (1, 2, 5):
        p = _args.decode_params(lib, q, fake((9, 256, 2, 64)), fake((9, 256, 2, 64)), out, seqlens,
                                k_new=fake((4, snew, 2, 64)), v_new=fake((4, snew, 2, 64)), causal=True,
                                cache_batch_idx=idx, cache_leftpad=pads)
        assert check_status(lib, "decode", p) == (0, ""), snew
    p = _args.decode_params(lib, q, fake((64, 16, 2, 64)), fake((64, 16, 2, 64)), out, seqlens,
                            block_table=fake((7, 16), I32), cache_batch_idx=idx, cache_leftpad=pads, num_splits=3)
    assert check_status(lib, "decode", p) == (0, "")
    bad = [
        ({"cache_batch_idx": fake((4,), F32)}, "cache_batch_idx.dtype"),
        ({"cache_batch_idx": fake((5,), I32)}, "cache_batch_idx.shape[0] (batch) is 5"),
        ({"cache_leftpad": fake((4, 1), I32)}, "cache_leftpad.rank is 2"),
        ({"cache_leftpad": fake((3,), I32)}, "cache_leftpad.shape[0] (batch) is 3"),
    ]
    for kw, what in bad:
        p = _args.decode_params(lib, q, fake((4, 256, 2, 64)), fake((4, 256, 2, 64)), out, seqlens, **kw)
        status, msg = check_status(lib, "decode", p)
        assert status == _abi.FA_STATUS_INVALID_ARGUMENT and what in msg, (kw, msg)
    # Without cache_batch_idx the contiguous cache still has one row per sequence.
    p = _args.decode_params(lib, q, fake((9, 256, 2, 64)), fake((9, 256, 2, 64)), out, seqlens)
    status, msg = check_status(lib, "decode", p)
    assert status == _abi.FA_STATUS_INVALID_ARGUMENT and "k_cache.shape[0] (batch) is 9" in msg
    # v of another seqlen than k is refused.
    p = _args.decode_params(lib, q, fake((4, 256, 2, 64)), fake((4, 256, 2, 64)), out, seqlens,
                            k_new=fake((4, 3, 2, 64)), v_new=fake((4, 2, 2, 64)))
    status, msg = check_status(lib, "decode", p)
    assert status == _abi.FA_STATUS_INVALID_ARGUMENT and "v_new.shape[1] (seqlen_knew)" in msg


# ---- the params structs are packed (struct.pack_into over runs of fields): byte for byte the field-by-field build ----

def _patterned(cls):
    """A params struct full of 0xA5 bytes: a field the packing should leave alone keeps them."""
    import ctypes
    return cls.from_buffer_copy(b"\xa5" * ctypes.sizeof(cls))


def _by_field(desc):
    t = _abi.FaTensor()
    if desc is not None:
        r = len(desc.shape)
        t.data, t.dtype, t.rank = desc.data or None, desc.dtype, r
        t.shape[:r], t.strides[:r] = desc.shape, desc.strides
    return t


def _by_field_options(p, scale, causal, window, softcap):
    p.softmax_scale, p.causal, (p.window_left, p.window_right), p.softcap = scale, int(causal), window, softcap


def _by_field_varlen(p, varlen):
    import ctypes
    if varlen is not None:
        cu_q, cu_k, p.varlen_batch, p.max_seqlen_q, p.max_seqlen_k = varlen
        p.cu_seqlens_q = ctypes.cast(cu_q, ctypes.POINTER(ctypes.c_int32))
        p.cu_seqlens_k = ctypes.cast(cu_k, ctypes.POINTER(ctypes.c_int32))


PACK_CASES = [
    ({}, False), ({"causal": True, "softmax_scale": 0.125, "softcap": 30.0}, False),
    ({"causal": True, "causal_alignment": _abi.FA_CAUSAL_TOP_LEFT, "window": (64, 0)}, False),
    ({"window": (2**31 - 1, 7), "softmax_scale": 1e-3}, True),
]


@pytest.mark.parametrize("kw,varlen", PACK_CASES, ids=["defaults", "causal-scale-softcap", "top-left-window", "varlen"])
def test_forward_params_are_packed_like_field_by_field(kw, varlen):
    fake = Fake()
    if varlen:
        q, k, v, o, lse = fake((300, 8, 64)), fake((400, 2, 64)), fake((400, 2, 64)), fake((300, 8, 64)), \
            fake((8, 300), F32)
        vl = (0x7E0000000000, 0x7E0000001000, 3, 128, 200)
    else:
        q, k, v, o, lse, vl = fake((2, 128, 8, 64)), fake((2, 256, 2, 64)), fake((2, 256, 2, 64)), \
            fake((2, 128, 8, 64)), None, None
    packed = _patterned(_abi.FaForwardParams)
    _args.pack_forward(packed, *(_args.desc_fields(t) for t in (q, k, v, o, lse)), kw.get("softmax_scale", 0.0),
                       kw.get("causal", False), kw.get("causal_alignment", 0), *kw.get("window", (-1, -1)),
                       kw.get("softcap", 0.0), vl)
    ref = _patterned(_abi.FaForwardParams)
    ref.q, ref.k, ref.v, ref.out, ref.lse = (_by_field(t) for t in (q, k, v, o, lse))
    _by_field_options(ref, kw.get("softmax_scale", 0.0), kw.get("causal", False), kw.get("window", (-1, -1)),
                      kw.get("softcap", 0.0))
    ref.causal_alignment = kw.get("causal_alignment", 0)
    _by_field_varlen(ref, vl)
    assert bytes(packed) == bytes(ref)


def test_backward_and_decode_params_are_packed_like_field_by_field():
    fake = Fake()
    shapes = [(2, 128, 8, 64), (2, 256, 2, 64), (2, 256, 2, 64), (2, 128, 8, 64), (2, 128, 8, 64)]
    q, k, v, o, do = (fake(s) for s in shapes)
    dq, dk, dv = (fake(s) for s in shapes[:3])
    lse = fake((2, 8, 128), F32)
    packed = _patterned(_abi.FaBackwardParams)
    _args.pack_backward(packed, *(_args.desc_fields(t) for t in (q, k, v, o, do, lse, dq, dk, dv)), 0.5, True,
                        _abi.FA_CAUSAL_TOP_LEFT, 32, 0, 10.0, True, (0x7E0000000000, 0x7E0000001000, 2, 128, 256))
    ref = _patterned(_abi.FaBackwardParams)
    ref.q, ref.k, ref.v, ref.out, ref.dout, ref.lse, ref.dq, ref.dk, ref.dv = (
        _by_field(t) for t in (q, k, v, o, do, lse, dq, dk, dv))
    _by_field_options(ref, 0.5, True, (32, 0), 10.0)
    ref.causal_alignment, ref.deterministic = _abi.FA_CAUSAL_TOP_LEFT, 1
    _by_field_varlen(ref, (0x7E0000000000, 0x7E0000001000, 2, 128, 256))
    assert bytes(packed) == bytes(ref)

    q, out, kc, vc = fake((4, 1, 8, 64)), fake((4, 1, 8, 64)), fake((64, 16, 2, 64)), fake((64, 16, 2, 64))
    seqlens, table, kn, vn = fake((4,), I32), fake((4, 16), I32), fake((4, 1, 2, 64)), fake((4, 1, 2, 64))
    packed = _patterned(_abi.FaDecodeParams)
    _args.pack_decode(packed, *(_args.desc_fields(t) for t in (q, kc, vc, kn, vn, out, None, seqlens, table)), 0.25,
                      True, 128, 0, 5.0, 7)
    ref = _patterned(_abi.FaDecodeParams)
    ref.q, ref.k_cache, ref.v_cache, ref.k_new, ref.v_new, ref.out, ref.lse, ref.cache_seqlens, ref.block_table = (
        _by_field(t) for t in (q, kc, vc, kn, vn, out, None, seqlens, table))
    _by_field_options(ref, 0.25, True, (128, 0), 5.0)
    ref.num_splits, ref.advance_cache_seqlens = 7, 0
    ref.cache_batch_idx, ref.cache_leftpad = _by_field(None), _by_field(None)
    assert bytes(packed) == bytes(ref)

    idx, pads = fake((4,), I32), fake((4,), I32)
    packed = _patterned(_abi.FaDecodeParams)
    _args.pack_decode(packed, *(_args.desc_fields(t) for t in (q, kc, vc, kn, vn, out, None, seqlens, table)), 0.25,
                      True, 128, 0, 5.0, 7, _args.desc_fields(idx), _args.desc_fields(pads))
    ref.cache_batch_idx, ref.cache_leftpad = _by_field(idx), _by_field(pads)
    assert bytes(packed) == bytes(ref)

    # The 0.12 per-sequence counts: packed q/out [total_q, heads, d], cu_seqlens_q / cu_seqlens_k_new [batch + 1].
    qp, op, cuq, cuk = fake((9, 8, 64)), fake((9, 8, 64)), fake((5,), I32), fake((5,), I32)
    packed = _patterned(_abi.FaDecodeParams)
    _args.pack_decode(packed, *(_args.desc_fields(t) for t in (qp, kc, vc, kn, vn, op, None, seqlens, table)), 0.25,
                      True, 128, 0, 5.0, 7, _args.desc_fields(idx), _args.desc_fields(pads), None,
                      _args.desc_fields(cuq), _args.desc_fields(cuk), 6)
    ref.q, ref.out = _by_field(qp), _by_field(op)
    ref.cu_seqlens_q, ref.cu_seqlens_k_new = _by_field(cuq), _by_field(cuk)
    ref.max_seqlen_q, ref.reserved2 = 6, 0
    assert bytes(packed) == bytes(ref)


def test_a_value_that_does_not_fit_its_field_is_an_error():
    fake = Fake()
    t = _args.desc_fields(fake((2, 64, 8, 64)))
    with pytest.raises(ValueError, match="does not fit its C field"):
        _args.pack_forward(_abi.FaForwardParams(), t, t, t, t, _args.NO_TENSOR, 0.0, False, 0, 2**31, -1, 0.0)
    with pytest.raises(ValueError, match="cannot be described"):
        _args.tensor_fields(0x7F0000000000, F32, (1, 2, 3, 4, 5), (120, 60, 20, 5, 1))


# ---- fp8 (e4m3): FlashAttention-3's fp8 forward ---------------------------------------------------------------------

E4M3 = _abi.FA_DTYPE_FLOAT8_E4M3


def fp8_fwd(fake, b=2, sq=128, sk=256, h=8, hkv=2, d=64, out_dtype=BF16, descale_shape=None, descale_dtype=F32,
            varlen=None, broadcast=False, **kw):
    """fa_forward_params_t of an fp8 call over fake descriptors, with the three descale tables (shape
    (b, hkv) unless descale_shape; broadcast: strides (0, 0) over one value)."""
    shape = descale_shape or (b, hkv)
    def table():
        t = fake(shape, descale_dtype)
        return t._replace(strides=(0, 0)) if broadcast else t
    if varlen:
        q, k, v, o = fake((300, h, d), E4M3), fake((400, hkv, d), E4M3), fake((400, hkv, d), E4M3), \
            fake((300, h, d), out_dtype)
    else:
        q, k, v, o = fake((b, sq, h, d), E4M3), fake((b, sk, hkv, d), E4M3), fake((b, sk, hkv, d), E4M3), \
            fake((b, sq, h, d), out_dtype)
    return _args.forward_params(lib_of(fake), q, k, v, o, kw.pop("lse", None), descales=(table(), table(), table()),
                                varlen=varlen, **kw)


def lib_of(fake):
    return fake.lib


class FakeWithLib(Fake):
    def __init__(self, lib):
        super().__init__()
        self.lib = lib


def test_fp8_descales_are_packed_like_field_by_field():
    fake = Fake()
    q, k, v, o = fake((2, 128, 8, 64), E4M3), fake((2, 256, 2, 64), E4M3), fake((2, 256, 2, 64), E4M3), \
        fake((2, 128, 8, 64), BF16)
    qd, kd = fake((2, 2), F32), fake((2, 2), F32)._replace(strides=(0, 0))  # per (batch, kv head); per tensor
    packed = _patterned(_abi.FaForwardParams)
    _args.pack_forward(packed, *(_args.desc_fields(t) for t in (q, k, v, o, None)), 0.0, True, 0, -1, -1, 0.0, None,
                       (_args.desc_fields(qd), _args.desc_fields(kd), _args.NO_TENSOR))
    ref = _patterned(_abi.FaForwardParams)
    ref.q, ref.k, ref.v, ref.out, ref.lse = (_by_field(t) for t in (q, k, v, o, None))
    _by_field_options(ref, 0.0, True, (-1, -1), 0.0)
    ref.causal_alignment = 0
    ref.q_descale, ref.k_descale, ref.v_descale = _by_field(qd), _by_field(kd), _by_field(None)
    assert bytes(packed) == bytes(ref)
    assert list(packed.k_descale.strides)[:2] == [0, 0] and packed.v_descale.data is None


def test_forward_params_have_no_descales_unless_given(lib):
    fake = Fake()
    p = fwd(lib, fake)
    for t in (p.q_descale, p.k_descale, p.v_descale):
        assert t.data is None and t.rank == 0  # the init template's zeroed descriptors: factor 1


def test_fp8_forward_is_served_by_the_sm90_path_only(lib):
    # Valid fp8 arguments (per-(batch, kv head) and per-tensor descales, fixed and variable length): at compute
    # capability 8.0 the library refuses them as UNSUPPORTED, naming fp8 and sm90; at 9.0 it serves them exactly
    # when this build has the sm90 fp8 kernels.
    fake = FakeWithLib(lib)
    served = fp8_kernels(lib)
    for p in (fp8_fwd(fake, causal=True), fp8_fwd(fake, broadcast=True, window=(64, 0), softcap=30.0),
              fp8_fwd(fake, varlen=(0x7E0000000000, 0x7E0000001000, 3, 128, 200), descale_shape=(3, 2))):
        status, msg = check_status(lib, "forward", p, 80)
        assert status == _abi.FA_STATUS_UNSUPPORTED and "fp8" in msg and "sm90" in msg, msg
        status, msg = check_status(lib, "forward", p, 90)
        assert (status, msg) == (0, "") if served else (status == _abi.FA_STATUS_UNSUPPORTED and "fp8" in msg), msg
    p = fp8_fwd(fake)
    p.kernel_path = _abi.FA_PATH_SM80
    status, msg = check_status(lib, "forward", p, 90)
    assert status == _abi.FA_STATUS_UNSUPPORTED and "FA_PATH_SM80" in msg, msg


@pytest.mark.parametrize("case,words", [
    ("out-fp16", "bf16"),
    ("k-bf16", "fp8"),
    ("descale-per-q-head", "heads_kv"),
    ("descale-fp16", "q_descale"),
    ("descale-on-bf16-call", "q_descale"),
    ("varlen-descale-per-fixed-batch", "varlen_batch"),
    ("head-dim-24", "multiples of 16"),
])
def test_fp8_argument_errors_carry_the_library_message(lib, case, words):
    fake = FakeWithLib(lib)
    if case == "out-fp16":
        p = fp8_fwd(fake, out_dtype=_abi.FA_DTYPE_FLOAT16)
    elif case == "k-bf16":
        p = fp8_fwd(fake)
        p.k.dtype = BF16
    elif case == "descale-per-q-head":
        p = fp8_fwd(fake, descale_shape=(2, 8))
    elif case == "descale-fp16":
        p = fp8_fwd(fake, descale_dtype=_abi.FA_DTYPE_FLOAT16)
    elif case == "descale-on-bf16-call":
        p = fp8_fwd(fake)
        for t in (p.q, p.k, p.v):
            t.dtype = BF16
    elif case == "varlen-descale-per-fixed-batch":
        p = fp8_fwd(fake, varlen=(0x7E0000000000, 0x7E0000001000, 3, 128, 200), descale_shape=(2, 2))
    else:
        p = fp8_fwd(fake, d=24)
    status, msg = check_status(lib, "forward", p, 90)
    assert status == _abi.FA_STATUS_INVALID_ARGUMENT, msg
    assert words in msg


def test_fp8_decode_is_refused(lib):
    fake = Fake()
    q, out = fake((4, 1, 8, 64), E4M3), fake((4, 1, 8, 64), BF16)
    p = _args.decode_params(lib, q, fake((4, 1024, 2, 64), E4M3), fake((4, 1024, 2, 64), E4M3), out,
                            fake((4,), I32))
    status, msg = check_status(lib, "decode", p, 90)
    assert status in (_abi.FA_STATUS_INVALID_ARGUMENT, _abi.FA_STATUS_UNSUPPORTED) and "fp8" in msg.lower(), msg


# The argument checks of the fp8 path in Python (CPU tensors: every check comes before the device check).

def _torch_fp8():
    torch = pytest.importorskip("torch", reason="PyTorch is not installed")
    if not hasattr(torch, "float8_e4m3fn"):
        pytest.skip(f"torch {torch.__version__} has no float8_e4m3fn")
    return torch


def _cpu_fp8(torch, *shape):
    return torch.randn(*shape).to(torch.float8_e4m3fn)


def test_fp8_descales_need_fp8_inputs():
    torch = _torch_fp8()
    q = torch.zeros(1, 16, 2, 64, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="k_descale is given but q is torch.bfloat16"):
        fai.flash_attn_func(q, q, q, k_descale=torch.ones(1, 2))


def test_fp8_inputs_that_require_grad_are_refused():
    torch = _torch_fp8()
    q = _cpu_fp8(torch, 1, 16, 2, 64)
    try:
        q.requires_grad_()
    except RuntimeError as e:
        pytest.skip(f"this PyTorch does not let an fp8 tensor require grad ({e})")
    with pytest.raises(UnsupportedArgumentError, match="no backward pass"):
        fai.flash_attn_func(q, q.detach(), q.detach())
    with torch.no_grad():  # grad mode off: not refused for that reason (the device check comes next)
        with pytest.raises(RuntimeError, match="runs on CUDA tensors only"):
            fai.flash_attn_func(q, q.detach(), q.detach())


@pytest.mark.parametrize("case,error,words", [
    ("k-bf16", TypeError, "k is torch.bfloat16 but q is torch.float8_e4m3fn"),
    ("descale-per-q-head", ValueError, r"v_descale must be \(batch, nheads_k\) = \(2, 2\)"),
    ("descale-fp16", TypeError, "q_descale must be torch.float32"),
    ("rank-3", ValueError, r"q must be \[batch, seqlen, heads, head_dim\]"),
    ("varlen-descale-rows", ValueError, r"k_descale must be \(batch, nheads_k\) = \(3, 2\)"),
    ("valid-on-cpu", RuntimeError, "runs on CUDA tensors only"),
])
def test_fp8_argument_checks(case, error, words):
    torch = _torch_fp8()
    q, k, v = _cpu_fp8(torch, 2, 16, 8, 64), _cpu_fp8(torch, 2, 32, 2, 64), _cpu_fp8(torch, 2, 32, 2, 64)
    d = {"q_descale": torch.rand(2, 2) * 2, "k_descale": torch.ones(1, 1).expand(2, 2), "v_descale": None}
    if case == "k-bf16":
        k = k.to(torch.bfloat16)
    elif case == "descale-per-q-head":
        d["v_descale"] = torch.ones(2, 8)
    elif case == "descale-fp16":
        d["q_descale"] = d["q_descale"].half()
    elif case == "rank-3":
        q = q[0]
    if case == "varlen-descale-rows":  # 3 sequences: q's table has 3 rows, k's the fixed batch's 2
        d["q_descale"] = torch.rand(3, 2) * 2
        cu = torch.tensor([0, 5, 5, 16], dtype=torch.int32)
        with pytest.raises(error, match=words):
            fai.flash_attn_varlen_func(q[0], k[0], v[0], cu, cu, 11, 11, **d)
        return
    with pytest.raises(error, match=words):
        fai.flash_attn_func(q, k, v, causal=True, **d)


def test_fp8_packed_functions_take_descales():
    torch = _torch_fp8()
    qkv = _cpu_fp8(torch, 2, 16, 3, 4, 64)
    with pytest.raises(ValueError, match=r"q_descale must be \(batch, nheads_k\) = \(2, 4\)"):
        fai.flash_attn_qkvpacked_func(qkv, q_descale=torch.ones(2, 2))
    with pytest.raises(RuntimeError, match="runs on CUDA tensors only"):  # every check passed: the device is next
        fai.flash_attn_kvpacked_func(qkv[:, :, 0], qkv[:, :, 1:], v_descale=torch.ones(2, 4))


def test_fp8_queries_over_a_kvcache_are_refused():
    """An fp8 q (or new k/v) is not served by decode: the cache may be fp8, with fp16/bf16 queries (C ABI 0.13)."""
    torch = _torch_fp8()
    q, cache = _cpu_fp8(torch, 1, 1, 4, 64), _cpu_fp8(torch, 1, 64, 4, 64)
    with pytest.raises(UnsupportedArgumentError, match="float8_e4m3fn"):
        fai.flash_attn_with_kvcache(q, cache, cache)
    ones = torch.ones(4)
    with pytest.raises(UnsupportedArgumentError, match="decode takes fp16 or bf16 queries and new keys/values"):
        fai.flash_attn_with_kvcache(q.to(torch.bfloat16), cache, cache, _cpu_fp8(torch, 1, 1, 4, 64),
                                    _cpu_fp8(torch, 1, 1, 4, 64), cache_seqlens=3, k_descale=ones, v_descale=ones)


# ---- fp8 KV cache (C ABI 0.13): the library's checks of the mapping, then the package's own argument checks --------

def fp8_cache_params(lib, fake, k_descale=True, v_descale=True, heads=2, paged=False, cache=E4M3):
    q, out = fake((4, 1, 8, 64), BF16), fake((4, 1, 8, 64), BF16)
    shape = (64, 16, 2, 64) if paged else (4, 1024, 2, 64)
    kw = {"block_table": fake((4, 16), I32)} if paged else {}
    return _args.decode_params(lib, q, fake(shape, cache), fake(shape, cache), out, fake((4,), I32),
                               k_new=fake((4, 1, 2, 64), BF16), v_new=fake((4, 1, 2, 64), BF16), causal=True,
                               k_descale=fake((heads,), F32) if k_descale else None,
                               v_descale=fake((heads,), F32) if v_descale else None, **kw)


@pytest.mark.parametrize("paged", [False, True], ids=["contiguous", "paged"])
@pytest.mark.parametrize("heads", [2, 1], ids=["per-head", "per-tensor"])
def test_fp8_kvcache_passes_the_library_check(lib, paged, heads):
    fake = Fake()
    p = fp8_cache_params(lib, fake, heads=heads, paged=paged)
    assert check_status(lib, "decode", p) == (0, "")
    assert check_status(lib, "decode", p, 90) == (0, "")
    assert (p.k_descale.dtype, p.k_descale.rank, p.k_descale.shape[0]) == (F32, 1, heads)


@pytest.mark.parametrize("case,words", [
    ("no-k-descale", "k_cache and v_cache are FA_DTYPE_FLOAT8_E4M3 but k_descale.data is NULL"),
    ("no-v-descale", "but v_descale.data is NULL"),
    ("descales-of-3-heads", "k_descale.shape[0] is 3 but must be heads_kv (k_cache.shape[2] = 2) or 1"),
    ("descales-with-bf16-cache", "k_descale.data is set but k_cache and v_cache are FA_DTYPE_BFLOAT16"),
])
def test_fp8_kvcache_errors_carry_the_library_message(lib, case, words):
    fake = Fake()
    if case == "no-k-descale":
        p = fp8_cache_params(lib, fake, k_descale=False)
    elif case == "no-v-descale":
        p = fp8_cache_params(lib, fake, v_descale=False)
    elif case == "descales-of-3-heads":
        p = fp8_cache_params(lib, fake, heads=3)
    else:
        p = fp8_cache_params(lib, fake, cache=BF16)
    status, msg = check_status(lib, "decode", p)
    assert status == _abi.FA_STATUS_INVALID_ARGUMENT and words in msg, msg


def test_fp8_kvcache_descales_are_packed_like_field_by_field():
    fake = Fake()
    kd, vd = fake((2,), F32), fake((1,), F32)
    packed = _patterned(_abi.FaDecodeParams)
    _args.pack_decode_descales(packed, _args.desc_fields(kd), _args.desc_fields(vd))
    ref = _patterned(_abi.FaDecodeParams)
    ref.k_descale, ref.v_descale = _by_field(kd), _by_field(vd)
    assert bytes(packed) == bytes(ref)


def test_the_query_serves_an_fp8_kvcache(lib):
    """fa_query_support's kv_cache_dtype (C ABI 0.13): served for decode with fp16/bf16 queries, refused elsewhere."""
    q = _abi.FaSupportQuery()
    q.struct_size, q.dtype, q.head_dim, q.kv_cache_dtype = ctypes.sizeof(q), BF16, 64, E4M3
    setattr(q, "pass", _abi.FA_PASS_DECODE)  # "pass" is a Python keyword
    assert lib.lib.fa_query_support(ctypes.byref(q)) == 0
    q.paged_kv = q.causal = q.softcap = 1
    assert lib.lib.fa_query_support(ctypes.byref(q)) == 0
    setattr(q, "pass", _abi.FA_PASS_FORWARD)
    q.paged_kv = 0
    assert lib.lib.fa_query_support(ctypes.byref(q)) == _abi.FA_STATUS_UNSUPPORTED
    setattr(q, "pass", _abi.FA_PASS_DECODE)
    q.dtype = E4M3
    assert lib.lib.fa_query_support(ctypes.byref(q)) == _abi.FA_STATUS_UNSUPPORTED


@pytest.mark.parametrize("case,error,words", [
    ("no-descales", ValueError, r"a torch.float8_e4m3fn cache needs k_descale: a float32 CUDA tensor of shape "
                                r"\(nheads_k,\) = \(2,\) or \(1,\)"),
    ("no-v-descale", ValueError, "needs v_descale"),
    ("descale-fp16", TypeError, "k_descale must be torch.float32"),
    ("descale-per-q-head", ValueError, r"v_descale must have shape \(nheads_k,\) = \(2,\) .* got \(4,\)"),
    ("descale-2d", ValueError, r"k_descale must have shape \(nheads_k,\)"),
    ("descale-not-a-tensor", TypeError, "k_descale must be a torch.Tensor"),
    ("v-cache-bf16", TypeError, "k_cache is torch.float8_e4m3fn but v_cache is torch.bfloat16"),
    ("head-dim-40", ValueError, "an fp8 cache's head_dim must be a multiple of 16"),
    ("descales-with-a-bf16-cache", ValueError, "k_descale is given but k_cache is torch.bfloat16; descales go with"),
    ("valid-on-cpu", RuntimeError, "runs on CUDA tensors only"),
])
def test_fp8_kvcache_argument_checks(case, error, words):
    torch = _torch_fp8()
    d = 40 if case == "head-dim-40" else 64
    q = torch.randn(2, 1, 4, d).to(torch.bfloat16)
    kc, vc = _cpu_fp8(torch, 2, 64, 2, d), _cpu_fp8(torch, 2, 64, 2, d)
    kw = {"k_descale": torch.rand(2) / 200, "v_descale": torch.rand(1) / 200}
    if case == "no-descales":
        kw = {}
    elif case == "no-v-descale":
        del kw["v_descale"]
    elif case == "descale-fp16":
        kw["k_descale"] = kw["k_descale"].half()
    elif case == "descale-per-q-head":
        kw["v_descale"] = torch.ones(4)
    elif case == "descale-2d":
        kw["k_descale"] = torch.ones(2, 2)
    elif case == "descale-not-a-tensor":
        kw["k_descale"] = 0.01
    elif case == "v-cache-bf16":
        vc = vc.to(torch.bfloat16)
    elif case == "descales-with-a-bf16-cache":
        kc, vc = kc.to(torch.bfloat16), vc.to(torch.bfloat16)
    with pytest.raises(error, match=words):
        fai.flash_attn_with_kvcache(q, kc, vc, cache_seqlens=10, **kw)


# ---- learnable sinks (C ABI 0.7) ----------------------------------------------------------------------------------

def test_sinks_are_packed_and_checked_by_the_library(lib):
    fake = Fake()
    sinks = fake((8,), F32)
    p = fwd(lib, fake, causal=True, sinks=sinks)
    assert check_status(lib, "forward", p) == (0, "")
    assert (p.sinks.data, p.sinks.dtype, p.sinks.rank, p.sinks.shape[0], p.sinks.strides[0]) == (sinks.data, F32, 1, 8, 1)
    assert not fwd(lib, fake).sinks.data  # none unless given
    status, msg = check_status(lib, "forward", fwd(lib, fake, sinks=fake((2,), F32)))
    assert status == _abi.FA_STATUS_INVALID_ARGUMENT and "sinks.shape is [2] but must be [heads_q] = [8]" in msg
    status, msg = check_status(lib, "forward", fwd(lib, fake, sinks=fake((8,), BF16)))
    assert status == _abi.FA_STATUS_INVALID_ARGUMENT and "sinks must be FA_DTYPE_FLOAT32" in msg

    shapes = [(2, 128, 8, 64), (2, 256, 2, 64), (2, 256, 2, 64), (2, 128, 8, 64), (2, 128, 8, 64)]
    q, k, v, o, do = (fake(s) for s in shapes)
    grads = [fake(s) for s in shapes[:3]]
    lse = fake((2, 8, 128), F32)
    dsinks = fake((8,), F32)
    b = _args.backward_params(lib, q, k, v, o, do, lse, *grads, causal=True, sinks=sinks, dsinks=dsinks)
    assert check_status(lib, "backward", b) == (0, "")
    assert (b.sinks.data, b.dsinks.data) == (sinks.data, dsinks.data)
    b = _args.backward_params(lib, q, k, v, o, do, lse, *grads, dsinks=dsinks)
    status, msg = check_status(lib, "backward", b)
    assert status == _abi.FA_STATUS_INVALID_ARGUMENT and "dsinks.data is set but sinks.data is NULL" in msg


def test_the_library_serves_sinks_in_the_forward_and_backward_not_decode(lib):
    import ctypes
    q = _abi.FaSupportQuery()
    q.struct_size = ctypes.sizeof(q)
    q.dtype, q.head_dim, q.sinks = _abi.FA_DTYPE_BFLOAT16, 64, 1
    for pass_, want in ((_abi.FA_PASS_FORWARD, 0), (_abi.FA_PASS_BACKWARD, 0),
                        (_abi.FA_PASS_DECODE, _abi.FA_STATUS_UNSUPPORTED)):
        setattr(q, "pass", pass_)  # "pass" is a Python keyword
        assert lib.lib.fa_query_support(ctypes.byref(q)) == want, pass_


def test_sinks_and_learnable_sink_are_one_argument():
    # Raised before torch is imported or a tensor is looked at.
    with pytest.raises(ValueError, match="sinks and learnable_sink are the same argument"):
        fai.flash_attn_func(X, X, X, sinks=X, learnable_sink=X)
    with pytest.raises(ValueError, match="give one of them"):
        fai.flash_attn_varlen_func(X, X, X, X, X, 1, 1, sinks=X, learnable_sink=X)


SINK_CHECKS = [
    ("list", TypeError, "sinks must be a torch.Tensor or None"),
    ("int32", TypeError, "sinks must be torch.float32, torch.float16 or torch.bfloat16"),
    ("per-kv-head", ValueError, r"sinks must be \(nheads,\) = \(4,\)"),
    ("rank-2", ValueError, r"sinks must be \(nheads,\) = \(4,\)"),
    ("cpu", RuntimeError, "runs on CUDA tensors only"),
]


@pytest.mark.parametrize("case,error,words", SINK_CHECKS, ids=[c[0] for c in SINK_CHECKS])
def test_sink_argument_checks(case, error, words):
    torch = pytest.importorskip("torch", reason="PyTorch is not installed")
    q, k = torch.randn(2, 8, 4, 64).half(), torch.randn(2, 8, 2, 64).half()
    sinks = {"list": [0.0] * 4, "int32": torch.zeros(4, dtype=torch.int32), "per-kv-head": torch.randn(2),
             "rank-2": torch.randn(4, 1), "cpu": torch.randn(4)}[case]
    with pytest.raises(error, match=words):
        fai.flash_attn_func(q, k, k, sinks=sinks)
    with pytest.raises(error, match=words):  # FlashAttention-4's name, the same checks
        fai.flash_attn_func(q, k, k, learnable_sink=sinks)


def test_sinks_with_fp8_inputs_are_refused():
    torch = pytest.importorskip("torch", reason="PyTorch is not installed")
    if getattr(torch, "float8_e4m3fn", None) is None:
        pytest.skip(f"torch {torch.__version__} has no float8_e4m3fn")
    q = torch.randn(2, 8, 4, 64).to(torch.float8_e4m3fn)
    with pytest.raises(UnsupportedArgumentError, match="learnable sinks with fp8 inputs"):
        fai.flash_attn_func(q, q, q, sinks=torch.randn(4))


# ---- ALiBi (C ABI 0.8) --------------------------------------------------------------------------------------------

def test_alibi_slopes_are_packed_and_checked_by_the_library(lib):
    fake = Fake()
    slopes = fake((8,), F32)
    p = _args.forward_params(lib, fake((2, 128, 8, 64)), fake((2, 256, 2, 64)), fake((2, 256, 2, 64)),
                             fake((2, 128, 8, 64)), causal=True, alibi_slopes=slopes)
    assert check_status(lib, "forward", p) == (0, "")
    a = p.alibi_slopes
    assert (a.data, a.dtype, a.rank, a.shape[0], a.strides[0]) == (slopes.data, F32, 1, 8, 1)
    assert not fwd(lib, fake).alibi_slopes.data  # none unless given
    per_batch = fake((2, 8), F32)
    p = _args.forward_params(lib, fake((2, 128, 8, 64)), fake((2, 256, 2, 64)), fake((2, 256, 2, 64)),
                             fake((2, 128, 8, 64)), alibi_slopes=per_batch)
    assert check_status(lib, "forward", p) == (0, "")
    p = _args.forward_params(lib, fake((2, 128, 8, 64)), fake((2, 256, 2, 64)), fake((2, 256, 2, 64)),
                             fake((2, 128, 8, 64)), alibi_slopes=fake((2,), F32))
    status, msg = check_status(lib, "forward", p)
    assert status == _abi.FA_STATUS_INVALID_ARGUMENT and "its last dimension must be heads_q = 8" in msg
    p = _args.forward_params(lib, fake((2, 128, 8, 64)), fake((2, 256, 2, 64)), fake((2, 256, 2, 64)),
                             fake((2, 128, 8, 64)), alibi_slopes=fake((8,), BF16))
    status, msg = check_status(lib, "forward", p)
    assert status == _abi.FA_STATUS_INVALID_ARGUMENT and "alibi_slopes must be FA_DTYPE_FLOAT32" in msg

    shapes = [(2, 128, 8, 64), (2, 256, 2, 64), (2, 256, 2, 64), (2, 128, 8, 64), (2, 128, 8, 64)]
    q, k, v, o, do = (fake(s) for s in shapes)
    grads = [fake(s) for s in shapes[:3]]
    lse = fake((2, 8, 128), F32)
    b = _args.backward_params(lib, q, k, v, o, do, lse, *grads, causal=True, alibi_slopes=per_batch)
    assert check_status(lib, "backward", b) == (0, "")
    assert b.alibi_slopes.data == per_batch.data


def test_the_library_serves_alibi_on_every_pass(lib):
    import ctypes
    q = _abi.FaSupportQuery()
    q.struct_size = ctypes.sizeof(q)
    q.dtype, q.head_dim, q.alibi, q.causal = _abi.FA_DTYPE_BFLOAT16, 64, 1, 1
    for pass_ in (_abi.FA_PASS_FORWARD, _abi.FA_PASS_BACKWARD, _abi.FA_PASS_DECODE):
        setattr(q, "pass", pass_)  # "pass" is a Python keyword
        assert lib.lib.fa_query_support(ctypes.byref(q)) == 0, pass_


def test_alibi_slopes_are_no_longer_refused_before_torch():
    # alibi_slopes goes to the tensor checks now: a stand-in object is refused as a tensor, not as an option.
    with pytest.raises(Exception) as ei:
        fai.flash_attn_func(X, X, X, alibi_slopes=X)
    assert not isinstance(ei.value, UnsupportedArgumentError)


ALIBI_CHECKS = [
    ("list", TypeError, "alibi_slopes must be a torch.Tensor or None"),
    ("fp16", TypeError, "alibi_slopes must be torch.float32"),
    ("per-kv-head", ValueError, r"alibi_slopes must be \(nheads,\) = \(4,\) or \(batch, nheads\) = \(2, 4\)"),
    ("wrong-batch", ValueError, r"alibi_slopes must be \(nheads,\)"),
    ("strided", ValueError, "contiguous last dimension"),
    ("cpu", RuntimeError, "runs on CUDA tensors only"),
]


@pytest.mark.parametrize("case,error,words", ALIBI_CHECKS, ids=[c[0] for c in ALIBI_CHECKS])
def test_alibi_argument_checks(case, error, words):
    torch = pytest.importorskip("torch", reason="PyTorch is not installed")
    q, k = torch.randn(2, 8, 4, 64).half(), torch.randn(2, 8, 2, 64).half()
    slopes = {"list": [0.0] * 4, "fp16": torch.zeros(4, dtype=torch.float16), "per-kv-head": torch.rand(2),
              "wrong-batch": torch.rand(3, 4), "strided": torch.rand(2, 8)[:, ::2], "cpu": torch.rand(2, 4)}[case]
    with pytest.raises(error, match=words):
        fai.flash_attn_func(q, k, k, alibi_slopes=slopes)
    with pytest.raises(error, match=words):
        fai.flash_attn_with_kvcache(q, k, k, alibi_slopes=slopes)


def test_alibi_with_fp8_inputs_is_refused():
    torch = pytest.importorskip("torch", reason="PyTorch is not installed")
    if getattr(torch, "float8_e4m3fn", None) is None:
        pytest.skip(f"torch {torch.__version__} has no float8_e4m3fn")
    q = torch.randn(2, 8, 4, 64).to(torch.float8_e4m3fn)
    with pytest.raises(UnsupportedArgumentError, match="ALiBi with fp8 inputs"):
        fai.flash_attn_func(q, q, q, alibi_slopes=torch.rand(4))


# ---- a separate V head dim (C ABI 0.10; FlashAttention-3's hdim / hdim_v) --------------------------------------------

F16 = _abi.FA_DTYPE_FLOAT16
V_PAIRS = [(192, 128), (64, 512)]


def fwd_v(lib, fake, d, dv, dtype=F16, b=2, sq=128, sk=256, h=8, hkv=2, out_dim=None, varlen=None, **kw):
    """fa_forward_params_t of a call whose q and k have head dim d and v dv; out has out_dim (default dv), lse is
    written. varlen: (cu_q, cu_k, batch, max_q, max_k) over 300 query and 400 key rows."""
    od = dv if out_dim is None else out_dim
    if varlen:
        q, k, v, o, lse = fake((300, h, d), dtype), fake((400, hkv, d), dtype), fake((400, hkv, dv), dtype), \
            fake((300, h, od), dtype), fake((h, 300), F32)
    else:
        q, k, v, o, lse = fake((b, sq, h, d), dtype), fake((b, sk, hkv, d), dtype), fake((b, sk, hkv, dv), dtype), \
            fake((b, sq, h, od), dtype), fake((b, h, sq), F32)
    return _args.forward_params(lib, q, k, v, o, lse, varlen=varlen, **kw)


@pytest.mark.parametrize("d,dv", V_PAIRS, ids=[f"d{d}-dv{dv}" for d, dv in V_PAIRS])
def test_a_served_v_head_dim_passes_the_library_check(lib, d, dv):
    """FlashAttention-3's pairs, fp16 and bf16, at compute capability 8.0 and 9.0 (FA_PATH_AUTO takes the sm80 path, or
    at 9.0 the sm90 one in a build with sm_90a code), with the forward options, fixed and variable
    length; v and out described with head_dim_v."""
    fake = Fake()
    sinks, slopes = fake((8,), F32), fake((2, 8), F32)
    options = [{}, {"causal": True}, {"causal": True, "causal_alignment": _abi.FA_CAUSAL_TOP_LEFT},
               {"window": (64, 0), "softcap": 30.0, "softmax_scale": 0.1}, {"causal": True, "sinks": sinks},
               {"alibi_slopes": slopes, "window": (32, 8)}]
    for dtype in (F16, BF16):
        for cc in (80, 90):
            for kw in options:
                p = fwd_v(lib, fake, d, dv, dtype, **kw)
                assert check_status(lib, "forward", p, cc) == (0, ""), (dtype, cc, kw)
            p = fwd_v(lib, fake, d, dv, dtype, causal=True, varlen=(0x7E0000000000, 0x7E0000001000, 3, 128, 200))
            assert check_status(lib, "forward", p, cc) == (0, ""), (dtype, cc, "varlen")
    p = fwd_v(lib, fake, d, dv)
    assert list(p.q.shape) == [2, 128, 8, d] and list(p.k.shape) == [2, 256, 2, d]
    assert list(p.v.shape) == [2, 256, 2, dv] and list(p.out.shape) == [2, 128, 8, dv]
    # out takes v's head dim: one with q's is refused.
    status, msg = check_status(lib, "forward", fwd_v(lib, fake, d, dv, out_dim=d))
    assert status == _abi.FA_STATUS_INVALID_ARGUMENT and "out" in msg, msg


@pytest.mark.parametrize("d,dv", [(64, 96), (64, 128), (128, 64), (192, 64), (256, 128)])
def test_other_v_head_dims_are_unsupported(lib, d, dv):
    # (A build without head dim d refuses its head dim first, whatever v's: FA_HEAD_DIMS picks them.)
    status, msg = check_status(lib, "forward", fwd_v(lib, Fake(), d, d), 80)
    if status != 0:
        pytest.skip(f"this build does not serve head dim {d}: {msg}")
    status, msg = check_status(lib, "forward", fwd_v(lib, Fake(), d, dv), 80)
    assert status == _abi.FA_STATUS_UNSUPPORTED and "head_dim_v" in msg, msg


@pytest.mark.parametrize("d,dv", V_PAIRS, ids=[f"d{d}-dv{dv}" for d, dv in V_PAIRS])
def test_a_v_head_dims_sm90_kernels(lib, d, dv):
    """The kernel list and the checks agree on FA_PATH_SM90 for a pair: the sm90 forward lists each pair's kernels
    exactly in a build with sm_90a code (and head dim d; (64, 512)'s in two CTAs of 256 output columns), the sm90
    backward (192, 128)'s, never (64, 512)'s, and they serve what they list at compute capability 9.0 and 0 (any GPU)
    without dropout; every other FA_PATH_SM90 call is UNSUPPORTED naming FA_PATH_SM90 and why. The backward serves
    (192, 128) on the sm80 path too, (64, 512) on none."""
    has_d = pair_kernels(lib, "sm80", "fwd", d, dv)
    if not has_d:
        pytest.skip(f"this build lacks head dim {d} (FA_HEAD_DIMS)")
    has_90a = sm90a(lib)
    sm90_pair = pair_kernels(lib, "sm90", "fwd", d, dv)
    assert sm90_pair == has_90a, (has_90a, sm90_pair)
    assert pair_kernels(lib, "sm90", "bwd", d, dv) == (has_90a and (d, dv) == (192, 128)), (has_90a, d, dv)
    assert pair_kernels(lib, "sm80", "bwd", d, dv) == ((d, dv) in _args.V_HEAD_DIM_BACKWARD_PAIRS)

    fake = Fake()
    shapes = [(2, 128, 8, d), (2, 256, 2, d), (2, 256, 2, dv), (2, 128, 8, dv), (2, 128, 8, dv)]
    q, k, v, o, do = (fake(s) for s in shapes)
    grads = [fake(s) for s in shapes[:3]]
    p = _args.backward_params(lib, q, k, v, o, do, fake((2, 8, 128), F32), *grads, causal=True)
    served_bwd = (d, dv) in _args.V_HEAD_DIM_BACKWARD_PAIRS
    for cc in (80, 90):
        status, msg = check_status(lib, "backward", p, cc)
        if served_bwd:
            assert (status, msg) == (0, ""), (cc, msg)
        else:
            assert status == _abi.FA_STATUS_UNSUPPORTED and "backward of a V head dim" in msg, msg
    p.kernel_path = _abi.FA_PATH_SM90
    for cc in (0, 80, 90):
        status, msg = check_status(lib, "backward", p, cc)
        if not served_bwd:
            assert status == _abi.FA_STATUS_UNSUPPORTED and "backward of a V head dim" in msg, (cc, msg)
        elif sm90_pair and cc != 80:
            assert (status, msg) == (0, ""), (cc, msg)
        else:
            why = "this build has no sm_90a code" if not has_90a else "compute capability 9.0"
            assert status == _abi.FA_STATUS_UNSUPPORTED and "FA_PATH_SM90" in msg and why in msg, (cc, msg)
    if served_bwd:
        # Dropout: the sm80 pair kernels' alone, so FA_PATH_SM90 refuses it and FA_PATH_AUTO takes sm80.
        p.dropout_p = 0.1
        status, msg = check_status(lib, "backward", p, 90)
        assert status == _abi.FA_STATUS_UNSUPPORTED and "FA_PATH_SM90" in msg and "dropout" in msg, msg
        p.kernel_path = _abi.FA_PATH_AUTO
        assert check_status(lib, "backward", p, 90) == (0, "")

    for varlen in (None, (0x7E0000000000, 0x7E0000001000, 3, 128, 200)):
        p = fwd_v(lib, fake, d, dv, causal=True, varlen=varlen)
        p.kernel_path = _abi.FA_PATH_SM80
        assert check_status(lib, "forward", p, 90) == (0, "")
        p.kernel_path = _abi.FA_PATH_SM90
        for cc in (0, 80, 90):
            status, msg = check_status(lib, "forward", p, cc)
            if sm90_pair and cc != 80:
                assert (status, msg) == (0, ""), (cc, msg)
            else:
                why = "this build has no sm_90a code" if not has_90a else "compute capability 9.0"
                assert status == _abi.FA_STATUS_UNSUPPORTED and "FA_PATH_SM90" in msg and why in msg, (cc, msg)
        # Dropout: the sm90 kernels have none, so FA_PATH_SM90 refuses it everywhere and FA_PATH_AUTO takes sm80.
        p.dropout_p = 0.1
        status, msg = check_status(lib, "forward", p, 90)
        assert status == _abi.FA_STATUS_UNSUPPORTED and "FA_PATH_SM90" in msg and "dropout" in msg, msg
        p.kernel_path = _abi.FA_PATH_AUTO
        assert check_status(lib, "forward", p, 90) == (0, "")


def test_the_query_serves_a_v_head_dim_on_sm80_and_on_sm90(lib):
    import ctypes
    q = _abi.FaSupportQuery()
    q.struct_size = ctypes.sizeof(q)

    def ask(pass_, dtype, d, dv, **flags):
        setattr(q, "pass", pass_)  # "pass" is a Python keyword
        q.dtype, q.head_dim, q.head_dim_v = dtype, d, dv
        q.kernel_path = flags.pop("kernel_path", _abi.FA_PATH_AUTO)
        q.compute_capability = flags.pop("cc", 0)
        for name in ("causal", "window", "softcap", "varlen", "sinks", "alibi", "dropout"):
            setattr(q, name, flags.pop(name, 0))
        assert not flags
        return lib.lib.fa_query_support(ctypes.byref(q))

    all_but_dropout = dict(causal=1, window=1, softcap=1, varlen=1, sinks=1, alibi=1)
    every_option = dict(all_but_dropout, dropout=1)
    unsupported = _abi.FA_STATUS_UNSUPPORTED
    sm90 = _abi.FA_PATH_SM90
    for d, dv in V_PAIRS:
        # The sm90 forward serves the pairs it lists kernels for (both in a build with sm_90a code), and the sm90
        # backward (192, 128), at compute capability 9.0 and 0 (any GPU), every option but dropout.
        sm90_fwd = 0 if pair_kernels(lib, "sm90", "fwd", d, dv) else unsupported
        sm90_bwd = 0 if pair_kernels(lib, "sm90", "bwd", d, dv) else unsupported
        for dtype in (F16, BF16):
            assert ask(_abi.FA_PASS_FORWARD, dtype, d, dv) == 0, (d, dv, dtype)
            assert ask(_abi.FA_PASS_FORWARD, dtype, d, dv, **every_option) == 0, (d, dv, dtype)
            assert ask(_abi.FA_PASS_FORWARD, dtype, d, dv, kernel_path=_abi.FA_PATH_SM80) == 0
            for cc in (0, 90):
                assert ask(_abi.FA_PASS_FORWARD, dtype, d, dv, kernel_path=sm90, cc=cc) == sm90_fwd, (d, dv, dtype, cc)
                assert ask(_abi.FA_PASS_FORWARD, dtype, d, dv, kernel_path=sm90, cc=cc, **all_but_dropout) == sm90_fwd
                assert ask(_abi.FA_PASS_FORWARD, dtype, d, dv, kernel_path=sm90, cc=cc, dropout=1) == unsupported
                assert ask(_abi.FA_PASS_FORWARD, dtype, d, dv, cc=cc, **every_option) == 0  # AUTO: sm80
                assert ask(_abi.FA_PASS_BACKWARD, dtype, d, dv, kernel_path=sm90, cc=cc) == sm90_bwd, (d, dv, dtype, cc)
                assert ask(_abi.FA_PASS_BACKWARD, dtype, d, dv, kernel_path=sm90, cc=cc, **all_but_dropout) == sm90_bwd
                assert ask(_abi.FA_PASS_BACKWARD, dtype, d, dv, kernel_path=sm90, cc=cc, dropout=1) == unsupported
            assert ask(_abi.FA_PASS_BACKWARD, dtype, d, dv, kernel_path=sm90, cc=80) == unsupported
            assert ask(_abi.FA_PASS_FORWARD, dtype, d, dv, kernel_path=sm90, cc=80) == unsupported
            assert ask(_abi.FA_PASS_BACKWARD, dtype, d, dv) == (0 if (d, dv) in _args.V_HEAD_DIM_BACKWARD_PAIRS
                                                                  else unsupported)
            assert ask(_abi.FA_PASS_DECODE, dtype, d, dv) == unsupported
        assert ask(_abi.FA_PASS_FORWARD, _abi.FA_DTYPE_FLOAT8_E4M3, d, dv) == unsupported
        assert ask(_abi.FA_PASS_FORWARD, BF16, d, 0) == 0  # 0: v's head dim is q's, as before 0.10
    assert ask(_abi.FA_PASS_FORWARD, BF16, 64, 96) == unsupported


def _cpu_v_head_dim_tensors(torch, d=64, dv=512):
    return (torch.zeros(2, 16, 4, d, dtype=torch.float16), torch.zeros(2, 24, 2, d, dtype=torch.float16),
            torch.zeros(2, 24, 2, dv, dtype=torch.float16))


V_GRAD_CASES = ["q", "k", "v", "v-lse", "sinks-only", "alibi", "dropout", "varlen", "varlen-sinks"]


@pytest.mark.parametrize("case", V_GRAD_CASES)
def test_a_v_head_dim_that_autograd_would_record_is_refused_up_front(case):
    """The library has no backward of the (64, 512) pair: a call whose inputs require grad (grad mode on) is refused
    with UnsupportedArgumentError before the device check (so on CPU tensors too); without grad the call goes on to the
    device check, as one with one head dim does."""
    torch = pytest.importorskip("torch", reason="PyTorch is not installed")
    q, k, v = _cpu_v_head_dim_tensors(torch)
    sinks = torch.zeros(4)
    kw, fn = {}, fai.flash_attn_func
    grad = {"q": q, "k": k, "v": v, "v-lse": v, "alibi": q, "dropout": q, "varlen": k,
            "sinks-only": sinks, "varlen-sinks": sinks}[case]
    grad.requires_grad_(True)
    if case == "v-lse":
        kw["return_attn_probs"] = True
    elif case in ("sinks-only", "varlen-sinks"):
        kw["sinks"] = sinks
    elif case == "alibi":
        kw["alibi_slopes"] = torch.rand(4)
    elif case == "dropout":
        kw["dropout_p"] = 0.1
    args = (q, k, v)
    if case.startswith("varlen"):
        cu_q, cu_k = torch.tensor([0, 10, 16], dtype=torch.int32), torch.tensor([0, 20, 24], dtype=torch.int32)
        fn, args = fai.flash_attn_varlen_func, (q[0], k[0], v[0], cu_q, cu_k, 10, 20)
    with pytest.raises(UnsupportedArgumentError) as ei:
        fn(*args, **kw)
    msg = str(ei.value)
    assert msg.startswith(fn.__name__ + ":") and "v's head dim 512 differs from q's and k's 64" in msg
    assert "(192, 128) only" in msg and "torch.no_grad()" in msg
    assert isinstance(ei.value, NotImplementedError)
    with torch.no_grad():  # not recorded: the forward is served, so the device check comes next
        with pytest.raises(RuntimeError, match="runs on CUDA tensors only"):
            fn(*args, **kw)


def test_one_head_dim_with_grad_and_a_v_head_dim_without_grad_are_not_refused():
    torch = pytest.importorskip("torch", reason="PyTorch is not installed")
    q, k, v = _cpu_v_head_dim_tensors(torch, 64, 64)
    for t in (q, k, v):
        t.requires_grad_(True)
    with pytest.raises(RuntimeError, match="runs on CUDA tensors only"):
        fai.flash_attn_func(q, k, v)
    q, k, v = _cpu_v_head_dim_tensors(torch, 64, 512)
    with pytest.raises(RuntimeError, match="runs on CUDA tensors only"):
        fai.flash_attn_func(q, k, v, causal=True)
    # (192, 128) has a backward: a call autograd records goes on to the device check too.
    q, k, v = _cpu_v_head_dim_tensors(torch, 192, 128)
    for t in (q, k, v):
        t.requires_grad_(True)
    with pytest.raises(RuntimeError, match="runs on CUDA tensors only"):
        fai.flash_attn_func(q, k, v, causal=True)
    # The packed forms hold k and v in one tensor (one head dim, q's): nothing to refuse there.
    q64 = torch.zeros(2, 16, 4, 64, dtype=torch.float16, requires_grad=True)
    with pytest.raises(RuntimeError, match="runs on CUDA tensors only"):
        fai.flash_attn_kvpacked_func(q64, torch.zeros(2, 24, 2, 2, 64, dtype=torch.float16, requires_grad=True))


def test_outputs_take_vs_head_dim():
    """The forward's out is q's shape with v's head dim (contiguous; q's own strides and descriptor when the head dims
    are equal and q is contiguous), the lse flash-attn's shape; fixed and variable length."""
    torch = pytest.importorskip("torch", reason="PyTorch is not installed")
    from flash_attn_interop import _ops
    q, _, v = _cpu_v_head_dim_tensors(torch, 192, 128)
    out, fo, lse, fl = _ops._outputs(q, _ops.fields(q), _ops.fields(v), True, False)
    assert out.shape == (2, 16, 4, 128) and out.is_contiguous() and out.dtype == q.dtype
    assert fo == _ops.fields(out) and lse.shape == (2, 4, 16) and fl == _ops.fields(lse)
    out, fo, lse, fl = _ops._outputs(q, _ops.fields(q), _ops.fields(q), False, False)
    assert out.shape == q.shape and out.stride() == q.stride() and fo == _ops.fields(out)
    assert lse is None and fl == _args.NO_TENSOR
    wide = torch.zeros(2, 16, 4, 256, dtype=torch.float16)[..., :192]  # not contiguous, last dim contiguous
    out, fo, _, _ = _ops._outputs(wide, _ops.fields(wide), _ops.fields(v), False, False)
    assert out.shape == (2, 16, 4, 128) and out.is_contiguous() and fo == _ops.fields(out)
    out, fo, _, _ = _ops._outputs(wide, _ops.fields(wide), _ops.fields(wide), False, False)
    assert out.shape == wide.shape and out.is_contiguous() and fo == _ops.fields(out)
    qv, vv = torch.zeros(30, 4, 64, dtype=torch.bfloat16), torch.zeros(40, 2, 512, dtype=torch.bfloat16)
    out, fo, lse, fl = _ops._outputs(qv, _ops.fields(qv), _ops.fields(vv), True, True)
    assert out.shape == (30, 4, 512) and fo == _ops.fields(out) and lse.shape == (4, 30)
    assert _ops._out_shape(q, v) == (2, 16, 4, 128) and _ops._out_shape(qv, qv) == (30, 4, 64)


# ---- paged K/V in the variable-length forward (C ABI 0.11; FlashAttention-2's block_table) ---------------------------

class Shaped:
    """Stands for a tensor of this shape where only dim() and shape are looked at (the checks before torch)."""

    def __init__(self, *shape):
        self.shape = shape

    def dim(self):
        return len(self.shape)


VARLEN_CU = (0x7E0000000000, 0x7E0000001000)


def fwd_paged(lib, fake, block=128, num_blocks=12, max_blocks=4, batch=3, max_k=None, dtype=F16, h=8, hkv=2, d=64,
              dv=None, table=None, varlen=True, **kw):
    """fa_forward_params_t of a paged call over fake descriptors: q [300, h, d], the pools k [num_blocks, block, hkv,
    d] and v [.., dv], block_table int32 [batch, max_blocks] (or `table`), max_seqlen_k the table's capacity unless
    given; varlen False: no cu_seqlens (what the library refuses)."""
    dv = dv or d
    k, v = fake((num_blocks, block, hkv, d), dtype), fake((num_blocks, block, hkv, dv), dtype)
    bt = table or fake((batch, max_blocks), I32)
    vl = (*VARLEN_CU, batch, 128, max_k if max_k is not None else max_blocks * block) if varlen else None
    return _args.forward_params(lib, fake((300, h, d), dtype), k, v, fake((300, h, dv), dtype), fake((h, 300), F32),
                                varlen=vl, block_table=bt, **kw)


def test_block_table_is_packed_like_field_by_field():
    fake = Fake()
    q, k, v, o, lse = fake((300, 8, 64)), fake((12, 128, 2, 64)), fake((12, 128, 2, 64)), fake((300, 8, 64)), \
        fake((8, 300), F32)
    table = fake((3, 4), I32)._replace(strides=(8, 1))  # a column slice of a wider table: read in place
    vl = (*VARLEN_CU, 3, 128, 512)
    packed = _patterned(_abi.FaForwardParams)
    _args.pack_forward(packed, *(_args.desc_fields(t) for t in (q, k, v, o, lse)), 0.0, True, 0, -1, -1, 0.0, vl)
    _args.pack_block_table(packed, _args.desc_fields(table))
    ref = _patterned(_abi.FaForwardParams)
    ref.q, ref.k, ref.v, ref.out, ref.lse = (_by_field(t) for t in (q, k, v, o, lse))
    _by_field_options(ref, 0.0, True, (-1, -1), 0.0)
    ref.causal_alignment = 0
    _by_field_varlen(ref, vl)
    ref.block_table = _by_field(table)
    assert bytes(packed) == bytes(ref)
    bt = packed.block_table
    assert (bt.data, bt.dtype, bt.rank) == (table.data, I32, 2)
    assert (list(bt.shape)[:2], list(bt.strides)[:2]) == ([3, 4], [8, 1])
    import ctypes
    assert ctypes.sizeof(_abi.FaForwardParams) - _abi.FaForwardParams.block_table.offset == ctypes.sizeof(_abi.FaTensor)


def test_forward_params_have_no_block_table_unless_given(lib):
    p = fwd(lib, Fake())
    assert p.block_table.data is None and p.block_table.rank == 0  # the init template's: k and v packed


@pytest.mark.parametrize("block", [128, 256, 384])
def test_a_paged_forward_passes_the_library_check(lib, block):
    """Block sizes that are multiples of 128, fp16 and bf16, at compute capability 8.0, 9.0 and 0 (any GPU), GQA, with
    the forward options and extras; the table may be wider than any sequence needs and hold more blocks than the
    pool (entries past a sequence's last block are never read)."""
    fake = Fake()
    options = [{}, {"causal": True}, {"causal": True, "causal_alignment": _abi.FA_CAUSAL_TOP_LEFT},
               {"window": (100, 0), "softcap": 30.0, "softmax_scale": 0.1}, {"causal": True, "sinks": fake((8,), F32)},
               {"alibi_slopes": fake((3, 8), F32), "window": (32, 8)}]
    for dtype in (F16, BF16):
        for cc in (80, 90, 0):
            for kw in options:
                p = fwd_paged(lib, fake, block=block, dtype=dtype, **kw)
                assert check_status(lib, "forward", p, cc) == (0, ""), (dtype, cc, kw)
            p = fwd_paged(lib, fake, block=block, dtype=dtype, num_blocks=2, max_blocks=9, max_k=block + 1)
            assert check_status(lib, "forward", p, cc) == (0, ""), (dtype, cc, "table wider than the pool")
            p = fwd_paged(lib, fake, block=block, dtype=dtype, causal=True)
            p.dropout_p = 0.1  # paged K/V is served without dropout (it is for attention over a KV cache)
            status, message = check_status(lib, "forward", p, cc)
            assert status == _abi.FA_STATUS_UNSUPPORTED and "dropout" in message, (dtype, cc, message)


@pytest.mark.parametrize("case,status,words", [
    ("no-varlen", _abi.FA_STATUS_INVALID_ARGUMENT, ["block_table", "cu_seqlens_q"]),
    ("block-64", _abi.FA_STATUS_UNSUPPORTED, ["block_size", "128"]),
    ("block-200", _abi.FA_STATUS_UNSUPPORTED, ["block_size", "128"]),
    ("over-capacity", _abi.FA_STATUS_INVALID_ARGUMENT, ["max_seqlen_k", "block_table"]),
    ("table-rows", _abi.FA_STATUS_INVALID_ARGUMENT, ["block_table.shape", "varlen_batch"]),
    ("table-rank-1", _abi.FA_STATUS_INVALID_ARGUMENT, ["block_table"]),
    ("table-float32", _abi.FA_STATUS_INVALID_ARGUMENT, ["block_table"]),
    ("k-packed", _abi.FA_STATUS_INVALID_ARGUMENT, ["k", "block_size"]),
    ("v-other-pool", _abi.FA_STATUS_INVALID_ARGUMENT, ["v.shape", "k.shape"]),
    ("fp8", _abi.FA_STATUS_UNSUPPORTED, ["fp8"]),
])
def test_paged_forward_errors_carry_the_library_message(lib, case, status, words):
    fake = Fake()
    cc = 80
    if case == "no-varlen":
        p = fwd_paged(lib, fake, varlen=False)
    elif case == "block-64":
        p = fwd_paged(lib, fake, block=64)
    elif case == "block-200":
        p = fwd_paged(lib, fake, block=200)
    elif case == "over-capacity":
        p = fwd_paged(lib, fake, max_k=4 * 128 + 1)
    elif case == "table-rows":
        p = fwd_paged(lib, fake, table=fake((2, 4), I32))
    elif case == "table-rank-1":
        p = fwd_paged(lib, fake, table=fake((12,), I32))
    elif case == "table-float32":
        p = fwd_paged(lib, fake, table=fake((3, 4), F32))
    elif case == "k-packed":
        p = fwd_paged(lib, fake)
        p.k = _args.fa_tensor(fake((400, 2, 64)))
    elif case == "v-other-pool":
        p = fwd_paged(lib, fake)
        p.v = _args.fa_tensor(fake((13, 128, 2, 64)))
    else:
        cc = 90
        p = fwd_paged(lib, fake)
        for t in (p.q, p.k, p.v):
            t.dtype = E4M3
        p.out.dtype = BF16
    got, msg = check_status(lib, "forward", p, cc)
    assert got == status, msg
    assert all(w in msg for w in words), msg


def test_the_query_serves_paged_kv_in_the_varlen_forward_and_decode(lib):
    """paged_kv (C ABI 0.11): the variable-length forward of both paths (fp16, bf16, every option but dropout) and
    decode serve it; the backward and fp8 do not; a forward query without varlen is invalid; a 0.10-sized query reads
    0."""
    import ctypes
    q = _abi.FaSupportQuery()
    q.struct_size = ctypes.sizeof(q)

    def ask(pass_, dtype=F16, **flags):
        setattr(q, "pass", pass_)  # "pass" is a Python keyword
        q.dtype, q.head_dim, q.head_dim_v = dtype, 64, 0
        q.kernel_path = flags.pop("kernel_path", _abi.FA_PATH_AUTO)
        q.compute_capability = flags.pop("cc", 0)
        q.paged_kv = flags.pop("paged_kv", 1)
        q.varlen = flags.pop("varlen", 1)
        for name in ("causal", "window", "softcap", "sinks", "alibi", "dropout"):
            setattr(q, name, flags.pop(name, 0))
        assert not flags
        return lib.lib.fa_query_support(ctypes.byref(q))

    every_option = dict(causal=1, window=1, softcap=1, sinks=1, alibi=1)
    for dtype in (F16, BF16):
        for cc in (0, 80, 90):
            assert ask(_abi.FA_PASS_FORWARD, dtype, cc=cc) == 0, (dtype, cc)
            assert ask(_abi.FA_PASS_FORWARD, dtype, cc=cc, **every_option) == 0, (dtype, cc)
            # paged K/V is served without dropout
            assert ask(_abi.FA_PASS_FORWARD, dtype, cc=cc, dropout=1) == _abi.FA_STATUS_UNSUPPORTED, (dtype, cc)
            assert ask(_abi.FA_PASS_FORWARD, dtype, cc=cc, kernel_path=_abi.FA_PATH_SM80) == 0, (dtype, cc)
            assert ask(_abi.FA_PASS_BACKWARD, dtype, cc=cc) == _abi.FA_STATUS_UNSUPPORTED, (dtype, cc)
            assert ask(_abi.FA_PASS_DECODE, dtype, cc=cc, varlen=0) == 0, (dtype, cc)
        assert ask(_abi.FA_PASS_FORWARD, dtype, varlen=0) == _abi.FA_STATUS_INVALID_ARGUMENT
        assert ask(_abi.FA_PASS_BACKWARD, dtype, paged_kv=0) == 0  # the same call, K/V contiguous
    assert ask(_abi.FA_PASS_FORWARD, E4M3, cc=90) == _abi.FA_STATUS_UNSUPPORTED
    assert ask(_abi.FA_PASS_FORWARD, paged_kv=2) == _abi.FA_STATUS_INVALID_ARGUMENT  # a flag: 0 or 1
    # A caller compiled against 0.10 passes the smaller query: paged_kv is not read (0), whatever lies there.
    q.struct_size = _abi.FaSupportQuery.paged_kv.offset
    assert ask(_abi.FA_PASS_BACKWARD) == 0


# The argument checks of a paged call in Python: the ones that need no torch come first (these run without it).

def test_block_table_needs_a_variable_length_batch():
    with pytest.raises(ValueError, match="block_table pages the keys and values of a variable-length batch"):
        fai.flash_attn_varlen_func(X, X, X, None, None, 8, 8, block_table=X)
    with pytest.raises(ValueError, match="cu_seqlens_q and cu_seqlens_k must be given"):
        fai.flash_attn_varlen_func(X, X, X, X, None, 8, 8, block_table=X)


@pytest.mark.parametrize("q,k,v,what", [
    (Shaped(30, 4, 64), Shaped(30, 2, 64), Shaped(4, 128, 2, 64), r"k must be a pool \[num_blocks, block_size"),
    (Shaped(30, 4, 64), Shaped(4, 128, 2, 64), Shaped(30, 2, 64), r"v must be a pool \[num_blocks, block_size"),
    (Shaped(1, 30, 4, 64), Shaped(4, 128, 2, 64), Shaped(4, 128, 2, 64), r"q must be \[total, heads, head_dim\]"),
], ids=["k-packed", "v-packed", "q-rank-4"])
def test_paged_layouts_are_checked_before_torch(q, k, v, what):
    with pytest.raises(ValueError, match=what):
        fai.flash_attn_varlen_func(q, k, v, X, X, 30, 256, block_table=X)


def test_paged_call_argument_errors_before_torch():
    # The options are checked as every call's, before the paged checks.
    with pytest.raises(ValueError, match=r"dropout_p is 1.0; it must be in \[0, 1\)"):
        fai.flash_attn_varlen_func(X, X, X, X, X, 8, 8, dropout_p=1.0, block_table=X)
    with pytest.raises(ValueError, match="window_size left must be >= -1"):
        fai.flash_attn_varlen_func(X, X, X, X, X, 8, 8, window_size=(-2, 0), block_table=X)
    # Dropout over paged K/V is refused before anything is drawn (the library refuses it too).
    with pytest.raises(fai.UnsupportedArgumentError, match=r"dropout_p=0\.1\d* is not served .*block_table"):
        fai.flash_attn_varlen_func(X, X, X, X, X, 8, 8, dropout_p=0.1, block_table=X)
    with pytest.raises(ValueError, match="sinks and learnable_sink are the same argument"):
        fai.flash_attn_varlen_func(X, X, X, X, X, 8, 8, block_table=X, sinks=X, learnable_sink=X)


def _cpu_paged(torch, lens_q=(10, 20), h=4, hkv=2, d=64, block=128, num_blocks=5, max_blocks=3):
    cu_q = torch.tensor([0, lens_q[0], sum(lens_q)], dtype=torch.int32)
    cu_k = torch.tensor([0, 100, 300], dtype=torch.int32)
    q = torch.zeros(sum(lens_q), h, d, dtype=torch.float16)
    k, v = (torch.zeros(num_blocks, block, hkv, d, dtype=torch.float16) for _ in range(2))
    table = torch.tensor([[3, 0, 7], [1, 4, 2]], dtype=torch.int32)[:, :max_blocks]
    return q, k, v, cu_q, cu_k, table


PAGED_CHECKS = [
    ("list", TypeError, "block_table must be a torch.Tensor or None"),
    ("int64", TypeError, r"block_table must be torch.int32 \(as flash-attn requires\), got torch.int64"),
    ("rank-1", ValueError, r"block_table must be \(batch, max_num_blocks_per_seq\) with batch = 2, one row of block "
                           r"ids per sequence of cu_seqlens_q, got \(6,\)"),
    ("rows", ValueError, r"block_table must be \(batch, max_num_blocks_per_seq\) with batch = 2.*got \(3, 2\)"),
    ("sinks", ValueError, r"sinks must be \(nheads,\) = \(4,\)"),
    ("alibi", ValueError, r"alibi_slopes must be \(nheads,\) = \(4,\) or \(batch, nheads\) = \(2, 4\)"),
    ("valid-on-cpu", RuntimeError, "runs on CUDA tensors only"),
    ("grad-on-cpu", RuntimeError, "runs on CUDA tensors only"),  # recorded, not refused up front (as flash-attn)
]


@pytest.mark.parametrize("case,error,words", PAGED_CHECKS, ids=[c[0] for c in PAGED_CHECKS])
def test_paged_argument_checks(case, error, words):
    """block_table's own checks (flash-attn's: int32, one row per sequence) and the extras' come before the device
    check, on CPU tensors; a valid call then asks for CUDA tensors."""
    torch = pytest.importorskip("torch", reason="PyTorch is not installed")
    q, k, v, cu_q, cu_k, table = _cpu_paged(torch)
    kw = {}
    if case == "list":
        table = table.tolist()
    elif case == "int64":
        table = table.long()
    elif case == "rank-1":
        table = table.flatten()
    elif case == "rows":
        table = torch.zeros(3, 2, dtype=torch.int32)
    elif case == "sinks":
        kw["sinks"] = torch.zeros(2)
    elif case == "alibi":
        kw["alibi_slopes"] = torch.zeros(3, 4)
    elif case == "grad-on-cpu":
        q.requires_grad_(True)
    with pytest.raises(error, match=words):
        fai.flash_attn_varlen_func(q, k, v, cu_q, cu_k, 20, 300, causal=True, block_table=table, **kw)


def test_paged_fp8_is_refused():
    torch = _torch_fp8()
    q, k, v, cu_q, cu_k, table = _cpu_paged(torch)
    q8, k8, v8 = (t.to(torch.float8_e4m3fn) for t in (q, k, v))
    with pytest.raises(UnsupportedArgumentError, match="block_table.*serves fp16 and bf16"):
        fai.flash_attn_varlen_func(q8, k8, v8, cu_q, cu_k, 20, 300, block_table=table)


def test_a_recorded_paged_call_runs_its_forward_and_its_backward_raises(monkeypatch):
    """The autograd wiring of a paged call without a GPU: the library call (forward_sink_impl) and the device check are
    stood in for, so this checks only what the package hands the library and what autograd gets. A call whose q
    requires grad is recorded (out requires grad, as flash-attn's does) and runs once; its backward raises
    UnsupportedArgumentError naming block_table; under no_grad nothing is recorded."""
    torch = pytest.importorskip("torch", reason="PyTorch is not installed")
    from flash_attn_interop import _ops
    seen = []

    def fake_forward(q, k, v, sinks, alibi_slopes, dropout_p, return_mask, *rest, block_table=None):
        seen.append((q, k, v, sinks, block_table, rest))
        out = torch.full((*q.shape[:-1], v.shape[-1]), 0.5, dtype=q.dtype)
        lse = torch.zeros(q.shape[1], q.shape[0])
        return out, lse, torch.empty(0, dtype=torch.int64), torch.empty(0, dtype=torch.uint8)

    monkeypatch.setattr(_ops, "forward_sink_impl", fake_forward)
    monkeypatch.setattr(_ops, "require_cuda", lambda function, **tensors: None)
    q, k, v, cu_q, cu_k, table = _cpu_paged(torch)
    qg = q.clone().requires_grad_(True)
    out, lse, s_dmask = fai.flash_attn_varlen_func(qg, k, v, cu_q, cu_k, 20, 300, causal=True, window_size=(64, 0),
                                                   softcap=5.0, block_table=table, return_attn_probs=True)
    assert len(seen) == 1
    fq, fk, fv, fsinks, ftable, rest = seen[0]
    assert ftable is table and fk is k and fv is v and fsinks is None  # the pools and the table, read in place
    assert rest[:6] == (0.0, True, _abi.FA_CAUSAL_BOTTOM_RIGHT, 64, 0, 5.0) and rest[6] is cu_q and rest[7] is cu_k
    assert rest[8:] == (20, 300)
    assert out.shape == (30, 4, 64) and lse.shape == (4, 30) and s_dmask.numel() == 0
    assert out.requires_grad and not lse.requires_grad
    with pytest.raises(UnsupportedArgumentError) as ei:
        out.float().sum().backward()
    msg = str(ei.value)
    assert msg.startswith("flash_attn_varlen_func:") and "block_table" in msg and "no backward" in msg
    assert "torch.no_grad()" in msg and qg.grad is None
    with torch.no_grad():
        out = fai.flash_attn_varlen_func(qg, k, v, cu_q, cu_k, 20, 300, block_table=table)
    assert not out.requires_grad and len(seen) == 2
    # An expanded (stride 0) table is copied (the library takes positive strides); a column slice is read in place.
    fai.flash_attn_varlen_func(q, k, v, cu_q, cu_k, 20, 300, block_table=table[:1].expand(2, 3))
    assert seen[-1][4].stride() == (3, 1)
    wide = torch.zeros(2, 8, dtype=torch.int32)
    fai.flash_attn_varlen_func(q, k, v, cu_q, cu_k, 20, 300, block_table=wide[:, :3])
    assert seen[-1][4].data_ptr() == wide.data_ptr() and seen[-1][4].stride() == (8, 1)
