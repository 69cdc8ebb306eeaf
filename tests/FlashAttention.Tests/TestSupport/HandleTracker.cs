using System.Collections.Concurrent;
using System.Runtime.CompilerServices;

namespace FlashAttn.Tests.TestSupport;

/// <summary>
/// Remembers objects a test created (thread-safe) without keeping them alive, and tells afterwards which are still
/// alive. A test drops every object it made (disposing some, abandoning others), calls <see cref="Settle"/>, and
/// expects <see cref="Alive"/> to be empty: an object still alive is referenced from somewhere (a leak in the library
/// or in the test).
/// </summary>
/// <remarks>
/// The references track resurrection (long weak references): they clear only when the object's memory is reclaimed,
/// which for an object with a finalizer (every <see cref="System.Runtime.InteropServices.SafeHandle"/>) is after the
/// finalizer ran. So an abandoned handle that reads as gone here has been through its finalizer, which released the
/// native resource. (A short weak reference clears before the finalizer runs and would prove nothing of the sort.)
/// </remarks>
internal sealed class HandleTracker
{
    private readonly ConcurrentQueue<(WeakReference Reference, string Kind)> _entries = new();

    /// <summary>Number of objects tracked so far.</summary>
    public int Count => _entries.Count;

    /// <summary>Collects garbage and runs finalizers until finalized objects are reclaimed too.</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    public static void Settle()
    {
        for (int i = 0; i < 3; i++)
        {
            GC.Collect();
            GC.WaitForPendingFinalizers();
        }

        GC.Collect();
    }

    /// <summary>Tracks <paramref name="value"/> under <paramref name="kind"/> and returns it.</summary>
    public T Track<T>(T value, string kind)
        where T : class
    {
        _entries.Enqueue((new WeakReference(value, trackResurrection: true), kind));
        return value;
    }

    /// <summary>How many tracked objects of each kind are still alive (call <see cref="Settle"/> first).</summary>
    public SortedDictionary<string, int> Alive()
    {
        var alive = new SortedDictionary<string, int>(StringComparer.Ordinal);
        foreach ((WeakReference reference, string kind) in _entries)
        {
            if (reference.IsAlive)
            {
                alive[kind] = alive.GetValueOrDefault(kind) + 1;
            }
        }

        return alive;
    }

    /// <summary>How many objects of each kind were tracked.</summary>
    public SortedDictionary<string, int> Tracked()
    {
        var tracked = new SortedDictionary<string, int>(StringComparer.Ordinal);
        foreach ((_, string kind) in _entries)
        {
            tracked[kind] = tracked.GetValueOrDefault(kind) + 1;
        }

        return tracked;
    }

    /// <summary>"kind: n, kind: n" for messages.</summary>
    public static string Describe(IReadOnlyDictionary<string, int> counts) =>
        counts.Count == 0 ? "none" : string.Join(", ", counts.Select(p => $"{p.Key}: {p.Value}"));
}
