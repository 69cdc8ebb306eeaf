using System.Collections.ObjectModel;
using FlashAttn.Internal;
using FlashAttn.Native;

namespace FlashAttn;

/// <content>Capability queries: which calls this build serves and which kernels it holds.</content>
public sealed partial class FlashAttention
{
    private static readonly Lock s_kernelsLock = new();
    private static ReadOnlyCollection<string>? s_kernels;

    /// <summary>
    /// Names of the kernels compiled into the loaded native library (e.g. <c>sm80_fwd_bf16_hdim128_...</c>), in the
    /// library's order. Read once per process; needs the native library but no GPU.
    /// </summary>
    /// <exception cref="FlashAttentionException">The native library cannot be loaded (status <see cref="FlashAttentionStatus.NoDevice"/>) or failed to answer.</exception>
    public static unsafe IReadOnlyList<string> CompiledKernels
    {
        get
        {
            if (s_kernels is { } cached)
            {
                return cached;
            }

            NativeRuntime.EnsureLoaded();
            lock (s_kernelsLock)
            {
                if (s_kernels is null)
                {
                    int count;
                    Errors.ThrowIfFailed(NativeMethods.fa_kernel_count(&count));
                    var names = new string[count];
                    for (int i = 0; i < count; i++)
                    {
                        nint name;
                        Errors.ThrowIfFailed(NativeMethods.fa_kernel_name(i, &name));
                        names[i] = NativeUtf8.Read(name);
                    }

                    s_kernels = new ReadOnlyCollection<string>(names);
                }

                return s_kernels;
            }
        }
    }

    /// <summary>
    /// Asks whether this build of the native library serves a kind of call (pass, dtype, head dim and V head dim, masks,
    /// varlen, paged K/V, the KV cache's dtype, architecture), so a caller can choose a fallback before launching. Needs the native library but no GPU.
    /// </summary>
    /// <param name="query">The kind of call.</param>
    /// <returns>
    /// <see cref="SupportResult.IsSupported"/> true with an empty reason, or false with the native library's
    /// sentence saying what is not served (for example a head dim that is not a multiple of 8, or a pass this
    /// build does not have).
    /// </returns>
    /// <exception cref="ArgumentNullException"><paramref name="query"/> is null.</exception>
    /// <exception cref="ArgumentException">
    /// The query is malformed: an undefined enum value (<see cref="SupportQuery.KvCacheDataType"/> included), a head dim below 1, a negative V head dim
    /// (<see cref="SupportQuery.HeadDimV"/>), a negative compute capability, or a forward query with
    /// <see cref="SupportQuery.PagedKv"/> but not <see cref="SupportQuery.Varlen"/>.
    /// </exception>
    /// <exception cref="FlashAttentionException">
    /// The native library cannot be loaded (status <see cref="FlashAttentionStatus.NoDevice"/>) or rejected the query
    /// as malformed.
    /// </exception>
    public static unsafe SupportResult QuerySupport(SupportQuery query)
    {
        ArgumentNullException.ThrowIfNull(query);
        if (!Enum.IsDefined(query.Pass))
        {
            throw new ArgumentException($"Pass {(int)query.Pass} is not a defined AttentionPass value.", nameof(query));
        }

        if (!Enum.IsDefined(query.DataType))
        {
            throw new ArgumentException($"DataType {(int)query.DataType} is not a defined value.", nameof(query));
        }

        if (!Enum.IsDefined(query.KernelPath))
        {
            throw new ArgumentException($"KernelPath {(int)query.KernelPath} is not a defined value.", nameof(query));
        }

        if (query.KvCacheDataType is { } cacheType && !Enum.IsDefined(cacheType))
        {
            throw new ArgumentException($"KvCacheDataType {(int)cacheType} is not a defined DataType value.", nameof(query));
        }

        if (query.HeadDim < 1)
        {
            throw new ArgumentException($"HeadDim must be 1 or more; got {query.HeadDim}.", nameof(query));
        }

        if (query.HeadDimV < 0)
        {
            throw new ArgumentException($"HeadDimV must be 0 (the same as HeadDim) or 1 or more; got {query.HeadDimV}.", nameof(query));
        }

        if (query.ComputeCapability < 0)
        {
            throw new ArgumentException(
                $"ComputeCapability must be 0 (any GPU) or major*10+minor; got {query.ComputeCapability}.", nameof(query));
        }

        if (query.PagedKv && query.Pass == AttentionPass.Forward && !query.Varlen)
        {
            throw new ArgumentException(
                "PagedKv is true with Varlen false for the forward pass; the forward's block table goes with a variable-length batch " +
                "(VarlenBatch.WithBlockTable): set Varlen too.", nameof(query));
        }

        NativeRuntime.EnsureLoaded();
        FaSupportQuery q = default;
        q.struct_size = (uint)sizeof(FaSupportQuery);
        q.pass = (int)query.Pass;
        q.compute_capability = query.ComputeCapability;
        q.dtype = (int)query.DataType;
        q.head_dim = query.HeadDim;
        q.causal = query.Causal ? 1 : 0;
        q.window = query.Window ? 1 : 0;
        q.softcap = query.Softcap ? 1 : 0;
        q.sinks = query.Sinks ? 1 : 0;
        q.alibi = query.Alibi ? 1 : 0;
        q.dropout = query.Dropout ? 1 : 0;
        q.varlen = query.Varlen ? 1 : 0;
        q.kernel_path = (int)query.KernelPath;
        q.head_dim_v = query.HeadDimV;
        q.paged_kv = query.PagedKv ? 1 : 0;
        // 0: the cache has q's dtype (C ABI 0.13), so asking with the query's own dtype is the same question.
        q.kv_cache_dtype = query.KvCacheDataType is { } kvType && kvType != query.DataType ? (int)kvType : 0;
        NativeCallObserver.Notify("fa_query_support", q);
        FaStatus status = NativeMethods.fa_query_support(&q);
        return status switch
        {
            FaStatus.Success => new SupportResult(true, string.Empty),
            FaStatus.Unsupported => new SupportResult(false, ReasonOrStatus(status)),
            _ => throw Errors.Create((FlashAttentionStatus)status, "fa_query_support"),
        };
    }

    private static string ReasonOrStatus(FaStatus status)
    {
        string message = Errors.LastErrorMessage();
        return message.Length > 0 ? message : Errors.StatusName((FlashAttentionStatus)status);
    }
}
