using Microsoft.Extensions.Logging;

namespace FlashAttn.Tests.TestSupport;

/// <summary>
/// A logger for a <see cref="FlashAttention"/> instance that keeps the name of every forward and backward kernel the
/// native library reports launching (its Debug lines <c>fa_forward: &lt;kernel&gt; for &lt;call&gt;</c> and
/// <c>fa_backward: &lt;kernel&gt; [(deterministic)] for &lt;call&gt;</c>, which the instance forwards as
/// <c>[native] ...</c>), so a test can tell which kernel family served a call. The native log is process-wide and goes
/// to the most recently created live instance with a logger; the Gpu fixtures run one at a time, so the fixture's own
/// instance receives it.
/// </summary>
internal sealed class KernelLog : ILogger
{
    private const string ForwardLine = "[native] fa_forward: ";
    private const string BackwardLine = "[native] fa_backward: ";
    private const string NothingLaunched = "nothing to launch";

    private readonly Lock _lock = new();
    private readonly List<string> _forward = [];
    private readonly List<string> _backward = [];

    /// <summary>The forward kernels reported since the last <see cref="Clear"/>, in launch order.</summary>
    public IReadOnlyList<string> ForwardKernels
    {
        get
        {
            lock (_lock)
            {
                return [.. _forward];
            }
        }
    }

    /// <summary>The backward main kernels reported since the last <see cref="Clear"/>, in launch order.</summary>
    public IReadOnlyList<string> BackwardKernels
    {
        get
        {
            lock (_lock)
            {
                return [.. _backward];
            }
        }
    }

    public void Clear()
    {
        lock (_lock)
        {
            _forward.Clear();
            _backward.Clear();
        }
    }

    public IDisposable? BeginScope<TState>(TState state)
        where TState : notnull => null;

    // Debug must be on: the native library names the kernel only at that level.
    public bool IsEnabled(LogLevel logLevel) => true;

    public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
    {
        string text = formatter(state, exception);
        List<string> into;
        string rest;
        if (text.StartsWith(ForwardLine, StringComparison.Ordinal))
        {
            into = _forward;
            rest = text[ForwardLine.Length..];
        }
        else if (text.StartsWith(BackwardLine, StringComparison.Ordinal))
        {
            into = _backward;
            rest = text[BackwardLine.Length..];
        }
        else
        {
            return;
        }

        if (rest.StartsWith(NothingLaunched, StringComparison.Ordinal))
        {
            return;
        }

        int space = rest.IndexOf(' ', StringComparison.Ordinal);
        lock (_lock)
        {
            into.Add(space < 0 ? rest : rest[..space]);
        }
    }
}
