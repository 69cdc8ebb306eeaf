namespace FlashAttn.Native;

/// <content>String conveniences over the generated <c>const char*</c> entry points.</content>
public static partial class NativeMethods
{
    /// <summary>The constant C name of <paramref name="status"/>, e.g. <c>FA_STATUS_INVALID_ARGUMENT</c>.</summary>
    /// <param name="status">A status returned by any <c>fa_*</c> call.</param>
    /// <returns>The name, never null.</returns>
    public static string GetStatusString(FaStatus status) => NativeUtf8.Read(fa_status_string(status));

    /// <summary>
    /// The message of the last failed <c>fa_*</c> call on this thread ("" after a success). Read it right after
    /// the failing call, on the same thread: the next call replaces it.
    /// </summary>
    /// <returns>The message, never null.</returns>
    public static string GetLastErrorMessage() => NativeUtf8.Read(fa_last_error_message());
}
