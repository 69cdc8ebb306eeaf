using System.Runtime.CompilerServices;
using FlashAttn.Native;

namespace FlashAttn.Internal;

/// <summary>The one place a native status becomes an exception.</summary>
internal static class Errors
{
    /// <summary>Throws <see cref="FlashAttentionException"/> unless <paramref name="status"/> is success.</summary>
    /// <param name="status">The native status.</param>
    /// <param name="expression">The call that returned it (filled in by the compiler).</param>
    public static void ThrowIfFailed(FaStatus status, [CallerArgumentExpression(nameof(status))] string? expression = null)
    {
        if (status != FaStatus.Success)
        {
            throw Create((FlashAttentionStatus)status, expression);
        }
    }

    /// <summary>Builds the exception for a failed status, reading the thread's native error message.</summary>
    public static FlashAttentionException Create(FlashAttentionStatus status, string? expression)
    {
        string native = LastErrorMessage();
        string function = FunctionName(expression);
        string text = native.Length > 0 ? native : "no message from the native library";
        string message = $"{function} failed ({StatusName(status)}): {text}";
        if (status == FlashAttentionStatus.NoDevice)
        {
            message = WithNoDeviceAdvice(message);
        }

        return new FlashAttentionException(status, message, native);
    }

    /// <summary>Appends what to do about a missing driver or GPU, unless the text already says it.</summary>
    public static string WithNoDeviceAdvice(string text)
    {
        text = text.TrimEnd();
        if (text.Contains("nvidia-smi", StringComparison.OrdinalIgnoreCase))
        {
            return text;
        }

        return text + (text.EndsWith('.') ? " " : ". ") +
            "GPU attention needs an NVIDIA GPU of compute capability 8.0 or newer and its driver; `nvidia-smi` shows " +
            "what the driver sees (check CUDA_VISIBLE_DEVICES too).";
    }

    /// <summary>The current thread's native error message, or "".</summary>
    public static string LastErrorMessage() => NativeMethods.GetLastErrorMessage();

    /// <summary>The native constant name of a status, e.g. FA_STATUS_INVALID_ARGUMENT.</summary>
    public static string StatusName(FlashAttentionStatus status) => status switch
    {
        FlashAttentionStatus.Success => "FA_STATUS_SUCCESS",
        FlashAttentionStatus.InvalidArgument => "FA_STATUS_INVALID_ARGUMENT",
        FlashAttentionStatus.Unsupported => "FA_STATUS_UNSUPPORTED",
        FlashAttentionStatus.NoDevice => "FA_STATUS_NO_DEVICE",
        FlashAttentionStatus.OutOfMemory => "FA_STATUS_OUT_OF_MEMORY",
        FlashAttentionStatus.CudaError => "FA_STATUS_CUDA_ERROR",
        FlashAttentionStatus.Internal => "FA_STATUS_INTERNAL",
        FlashAttentionStatus.DeviceCheckFailed => "FA_STATUS_DEVICE_CHECK_FAILED",
        _ => $"status {(int)status}",
    };

    private static string FunctionName(string? expression)
    {
        if (string.IsNullOrEmpty(expression))
        {
            return "a native call";
        }

        int paren = expression.IndexOf('(', StringComparison.Ordinal);
        string head = paren > 0 ? expression[..paren] : expression;
        int dot = head.LastIndexOf('.');
        return dot >= 0 ? head[(dot + 1)..] : head;
    }
}
