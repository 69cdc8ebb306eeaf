using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using FlashAttn.Native;
using Microsoft.Extensions.Logging;

namespace FlashAttn.Internal;

/// <summary>
/// Routes the native library's log callback (process-wide) to an <see cref="ILogger"/>. The most recently
/// registered logger that is still registered receives the messages; with none, the callback is turned off.
/// The callback is a static <see cref="UnmanagedCallersOnlyAttribute"/> method, so there is no delegate for the
/// garbage collector to collect while native code holds its address.
/// </summary>
internal static class NativeLogBridge
{
    private static readonly Lock s_lock = new();
    private static readonly List<ILogger> s_loggers = [];
    private static volatile ILogger? s_current;

    /// <summary>The logger that receives native messages and managed release-path warnings, if any.</summary>
    public static ILogger? Current => s_current;

    public static void Register(ILogger logger)
    {
        lock (s_lock)
        {
            s_loggers.Add(logger);
            s_current = logger;
            if (s_loggers.Count == 1)
            {
                Install(enable: true);
            }
        }
    }

    public static void Unregister(ILogger logger)
    {
        lock (s_lock)
        {
            int i = s_loggers.LastIndexOf(logger);
            if (i < 0)
            {
                return;
            }

            s_loggers.RemoveAt(i);
            s_current = s_loggers.Count > 0 ? s_loggers[^1] : null;
            if (s_loggers.Count == 0)
            {
                Install(enable: false);
            }
        }
    }

    /// <summary>Logs a failure on a release path (never throws).</summary>
    public static void ReleaseFailed(string what, FaStatus status)
    {
        try
        {
            ILogger? logger = s_current;
            if (logger is not null && logger.IsEnabled(LogLevel.Warning))
            {
                string native = Errors.LastErrorMessage();
                logger.LogWarning("Releasing {What} failed ({Status}): {Message}", what, Errors.StatusName((FlashAttentionStatus)status), native);
            }
        }
        catch (Exception)
        {
            // A release path must never throw; losing the log line is the lesser harm.
        }
    }

    private static unsafe void Install(bool enable)
    {
        try
        {
            delegate* unmanaged[Cdecl]<int, nint, nint, void> callback = enable ? &OnNativeLog : null;
            _ = NativeMethods.fa_set_log_callback(callback, 0);
        }
        catch (Exception)
        {
            // No native library: nothing to route.
        }
    }

    [UnmanagedCallersOnly(CallConvs = [typeof(CallConvCdecl)])]
    private static void OnNativeLog(int level, nint message, nint userData)
    {
        try
        {
            ILogger? logger = s_current;
            if (logger is null)
            {
                return;
            }

            LogLevel mapped = level switch
            {
                0 => LogLevel.Debug,
                1 => LogLevel.Information,
                2 => LogLevel.Warning,
                _ => LogLevel.Error,
            };
            if (!logger.IsEnabled(mapped))
            {
                return;
            }

            string text = NativeUtf8.Read(message);
            logger.Log(mapped, "[native] {Message}", text);
        }
        catch (Exception)
        {
            // An exception must never unwind into native code.
        }
    }
}
