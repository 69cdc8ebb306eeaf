using FlashAttn.Native;

namespace FlashAttn.Internal;

/// <summary>
/// Loads the native library once per process, checks its version, and turns every way that can fail into one
/// <see cref="FlashAttentionException"/> with status <see cref="FlashAttentionStatus.NoDevice"/>.
/// </summary>
internal static class NativeRuntime
{
    private static readonly Lazy<LoadResult> s_load = new(Load, LazyThreadSafetyMode.ExecutionAndPublication);

    /// <summary>The file the native library was loaded from, or null if it is not loaded.</summary>
    public static string? LoadedPath => s_load.Value.Error is null ? NativeLibraryLoader.LoadedPath : null;

    /// <summary>The version code of the loaded binary (MAJOR*10000 + MINOR*100 + PATCH), or 0.</summary>
    public static int Version => s_load.Value.Version;

    /// <summary>Loads the library if needed; returns false with the reason when it cannot be used.</summary>
    public static bool TryEnsureLoaded(out string reason)
    {
        LoadResult r = s_load.Value;
        reason = r.Error?.Message ?? string.Empty;
        return r.Error is null;
    }

    /// <summary>Loads the library if needed; throws the cached <see cref="FlashAttentionException"/> otherwise.</summary>
    public static void EnsureLoaded()
    {
        LoadResult r = s_load.Value;
        if (r.Error is not null)
        {
            // A fresh exception per throw (same message, same cause) so stack traces point at the caller.
            throw new FlashAttentionException(
                r.Error.Status, r.Error.Message, r.Error.NativeMessage, r.Error.InnerException);
        }
    }

    private static LoadResult Load()
    {
        const string Advice =
            " Build it with `./build.sh build` (the library lands in artifacts/native/), or set FLASH_ATTENTION_NATIVE_PATH" +
            " to the file or to its folder.";
        try
        {
            // Finds the library, loads it and refuses another major version.
            NativeLibraryLoader.EnsureLoaded();
            return new LoadResult(null, NativeLibraryLoader.LoadedVersionCode ?? NativeMethods.fa_version());
        }
        catch (DllNotFoundException ex)
        {
            return Fail($"The native library libflash_attention.so could not be loaded, so GPU attention is not available: {ex.Message}", ex);
        }
        catch (InvalidOperationException ex)
        {
            // Wrong major version; the loader's message says what to rebuild.
            return Fail(ex.Message, ex);
        }
        catch (EntryPointNotFoundException ex)
        {
            return Fail($"The native library at {NativeLibraryLoader.LoadedPath} lacks an expected export ({ex.Message}); it is older or newer than these bindings.", ex);
        }
        catch (BadImageFormatException ex)
        {
            return Fail($"The native library could not be loaded because it was built for another platform: {ex.Message}", ex);
        }

        LoadResult Fail(string message, Exception cause) =>
            new(new FlashAttentionException(
                FlashAttentionStatus.NoDevice,
                message.TrimEnd() + (message.Contains("FLASH_ATTENTION_NATIVE_PATH", StringComparison.Ordinal) ? string.Empty : Advice),
                nativeMessage: null,
                cause), 0);
    }

    internal static string FormatVersion(int code) => $"{code / 10000}.{code / 100 % 100}.{code % 100}";

    private sealed record LoadResult(FlashAttentionException? Error, int Version);
}
