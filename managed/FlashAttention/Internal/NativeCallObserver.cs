namespace FlashAttn.Internal;

/// <summary>
/// A test hook: when an observer is installed on the calling thread, every attention call hands it the name of the
/// native function it is about to call and a copy of the params struct it passes (boxed), just before the call. Lets
/// tests compare what two managed entry points send to the library without a GPU. Costs one thread-static read per
/// call when no observer is installed.
/// </summary>
internal static class NativeCallObserver
{
    [ThreadStatic]
    private static Action<string, object>? _observer;

    /// <summary>Installs <paramref name="observer"/> on this thread until the result is disposed.</summary>
    public static IDisposable Observe(Action<string, object> observer)
    {
        Action<string, object>? previous = _observer;
        _observer = observer;
        return new Restore(previous);
    }

    /// <summary>Reports a native call about to be made with <paramref name="parameters"/>.</summary>
    public static void Notify<T>(string function, in T parameters)
        where T : unmanaged
    {
        if (_observer is { } observer)
        {
            observer(function, parameters);
        }
    }

    private sealed class Restore(Action<string, object>? previous) : IDisposable
    {
        public void Dispose() => _observer = previous;
    }
}
