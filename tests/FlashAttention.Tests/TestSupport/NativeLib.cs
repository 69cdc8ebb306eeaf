using FlashAttn.Native;
using NUnit.Framework;

namespace FlashAttn.Tests.TestSupport;

/// <summary>Access to the real native library for tests that call the C ABI directly.</summary>
internal static class NativeLib
{
    /// <summary>
    /// Loads libflash_attention through the bindings' resolver. Cpu tests that need the library FAIL (not skip)
    /// when it cannot be loaded: CI builds it, so its absence is a defect, and the message says where it was sought.
    /// </summary>
    public static void Require()
    {
        try
        {
            NativeLibraryLoader.EnsureLoaded();
            _ = NativeMethods.fa_version();
        }
        catch (Exception ex) when (ex is DllNotFoundException or EntryPointNotFoundException or BadImageFormatException)
        {
            Assert.Fail(
                "libflash_attention.so could not be loaded (build it with ./build.sh build, or set " +
                $"FLASH_ATTENTION_NATIVE_PATH): {ex.GetType().Name}: {ex.Message}");
        }
    }

    /// <summary>fa_last_error_message of this thread.</summary>
    public static string LastError() => NativeUtf8.Read(NativeMethods.fa_last_error_message());
}
