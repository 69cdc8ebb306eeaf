namespace FlashAttn;

/// <summary>
/// A failure reported by the native FlashAttention library, or the native library being unusable in this process.
/// </summary>
/// <remarks>
/// <para>
/// <see cref="Status"/> says what kind of failure it was, so callers can branch on it; <see cref="NativeMessage"/>
/// is the library's own sentence (from <c>fa_last_error_message</c>).
/// </para>
/// <para>
/// Three situations mean "GPU attention cannot run here" and all surface as one exception with
/// <see cref="Status"/> = <see cref="FlashAttentionStatus.NoDevice"/> and a message saying what to do:
/// the native library could not be loaded (then <see cref="Exception.InnerException"/> is the
/// <see cref="DllNotFoundException"/> or load error), no NVIDIA driver is installed, or the driver sees no GPU.
/// <see cref="CudaDevice.Count"/> and <see cref="CudaDevice.TryGetAvailability(out string)"/> answer the same
/// question without throwing.
/// </para>
/// </remarks>
public class FlashAttentionException : Exception
{
    /// <summary>Creates an exception with status <see cref="FlashAttentionStatus.Internal"/>.</summary>
    public FlashAttentionException()
        : this(FlashAttentionStatus.Internal, "FlashAttention failed.")
    {
    }

    /// <summary>Creates an exception with status <see cref="FlashAttentionStatus.Internal"/> and a message.</summary>
    /// <param name="message">What went wrong.</param>
    public FlashAttentionException(string message)
        : this(FlashAttentionStatus.Internal, message)
    {
    }

    /// <summary>Creates an exception with status <see cref="FlashAttentionStatus.Internal"/>, a message and a cause.</summary>
    /// <param name="message">What went wrong.</param>
    /// <param name="innerException">The exception that caused this one.</param>
    public FlashAttentionException(string message, Exception innerException)
        : this(FlashAttentionStatus.Internal, message, nativeMessage: null, innerException)
    {
    }

    /// <summary>Creates an exception for a native status.</summary>
    /// <param name="status">The failure kind.</param>
    /// <param name="message">The full message shown to the user.</param>
    /// <param name="nativeMessage">The native library's own message, if any.</param>
    /// <param name="innerException">The exception that caused this one, if any.</param>
    public FlashAttentionException(
        FlashAttentionStatus status, string message, string? nativeMessage = null, Exception? innerException = null)
        : base(message, innerException)
    {
        Status = status;
        NativeMessage = nativeMessage ?? string.Empty;
    }

    /// <summary>The kind of failure.</summary>
    public FlashAttentionStatus Status { get; }

    /// <summary>The native library's message (<c>fa_last_error_message</c>), or "" when there was none.</summary>
    public string NativeMessage { get; }
}
