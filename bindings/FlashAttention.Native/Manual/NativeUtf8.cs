using System.Runtime.InteropServices;

namespace FlashAttn.Native;

/// <summary>Reads the NUL-terminated UTF-8 strings the C ABI returns as <c>const char*</c>.</summary>
public static class NativeUtf8
{
    /// <summary>
    /// Copies the NUL-terminated UTF-8 string at <paramref name="pointer"/> into a managed string; a null pointer
    /// gives the empty string. The native memory is not freed (the library owns every string it returns).
    /// </summary>
    /// <param name="pointer">A <c>const char*</c> returned by the library, or zero.</param>
    /// <returns>The decoded string.</returns>
    public static string Read(nint pointer) =>
        pointer == 0 ? string.Empty : Marshal.PtrToStringUTF8(pointer) ?? string.Empty;
}
