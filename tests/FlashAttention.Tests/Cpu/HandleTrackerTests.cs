using System.Runtime.CompilerServices;
using FlashAttn.Tests.TestSupport;
using NUnit.Framework;

namespace FlashAttn.Tests.Cpu;

/// <summary>
/// The object check of the Gpu handle stress (<see cref="HandleTracker"/>) without a GPU: borrowed streams (SafeHandles
/// with finalizers that never reach the native library) disposed, abandoned, and one kept referenced.
/// </summary>
[TestFixture]
[Category("Cpu")]
[NonParallelizable]
public sealed class HandleTrackerTests
{
    [Test]
    public void ReportsExactlyTheObjectsStillReferenced()
    {
        var tracker = new HandleTracker();
        var kept = new List<CudaStream>();
        MakeObjects(tracker, kept);
        HandleTracker.Settle();

        Assert.Multiple(() =>
        {
            Assert.That(tracker.Tracked(), Is.EqualTo(new SortedDictionary<string, int> { ["abandoned"] = 50, ["disposed"] = 50, ["kept"] = 2 }));
            Assert.That(tracker.Alive(), Is.EqualTo(new SortedDictionary<string, int> { ["kept"] = 2 }),
                "disposed and abandoned (finalized) objects are gone; the referenced ones are reported");
        });

        GC.KeepAlive(kept);
        kept.Clear();
        HandleTracker.Settle();
        Assert.That(tracker.Alive(), Is.Empty, "once nothing references them, they are gone too");
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static void MakeObjects(HandleTracker tracker, List<CudaStream> kept)
    {
        for (int i = 0; i < 50; i++)
        {
            tracker.Track(CudaStream.FromHandle((IntPtr)(0x5000_0000 + (i * 256))), "disposed").Dispose();
            _ = tracker.Track(CudaStream.FromHandle((IntPtr)(0x5100_0000 + (i * 256))), "abandoned");
        }

        kept.Add(tracker.Track(CudaStream.FromHandle((IntPtr)0x5200_0000), "kept"));
        kept.Add(tracker.Track(CudaStream.FromHandle((IntPtr)0x5200_0100), "kept"));
    }
}
