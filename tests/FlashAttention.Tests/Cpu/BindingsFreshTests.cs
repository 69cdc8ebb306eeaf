using System.Diagnostics;
using FlashAttn.Tests.TestSupport;
using NUnit.Framework;

namespace FlashAttn.Tests.Cpu;

/// <summary>The checked-in bindings match what the generator makes from the header today.</summary>
[TestFixture]
[Category("Cpu")]
public sealed class BindingsFreshTests
{
    [Test]
    [CancelAfter(600_000)]
    public void GeneratedBindingsAreUpToDate()
    {
        string? root = RepoRoot.Find();
        if (root is null)
        {
            Assert.Ignore($"the source tree ({RepoRoot.SolutionFile}) is not above {AppContext.BaseDirectory} " +
                "(e.g. the self-contained bundle), so the generator cannot run here");
        }

        string? dotnet = FindDotnet();
        if (dotnet is null)
        {
            Assert.Ignore("no .NET SDK here (e.g. the GPU machine runs the self-contained bundle), so the generator cannot run");
        }

        var (exitCode, output) = Run(dotnet, root,
            "run", "--project", "bindings/Generator", "-c", "Release", "--no-launch-profile", "--",
            "@bindings/generate.rsp", "--check");
        Assert.That(exitCode, Is.Zero,
            $"`dotnet run --project bindings/Generator -c Release -- @bindings/generate.rsp --check` in {root} " +
            $"failed; regenerate the bindings (the same command without --check). Output:\n{output}");
    }

    /// <summary>A dotnet host with at least one SDK, or null.</summary>
    private static string? FindDotnet()
    {
        var candidates = new List<string>();
        if (Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") is { Length: > 0 } host)
        {
            candidates.Add(host);
        }

        if (Environment.GetEnvironmentVariable("DOTNET_ROOT") is { Length: > 0 } dotnetRoot)
        {
            candidates.Add(Path.Combine(dotnetRoot, "dotnet"));
        }

        foreach (string dir in (Environment.GetEnvironmentVariable("PATH") ?? string.Empty).Split(Path.PathSeparator))
        {
            if (dir.Length > 0)
            {
                candidates.Add(Path.Combine(dir, "dotnet"));
            }
        }

        foreach (string candidate in candidates.Where(File.Exists).Distinct())
        {
            try
            {
                var (exitCode, output) = Run(candidate, Environment.CurrentDirectory, "--list-sdks");
                if (exitCode == 0 && output.Trim().Length > 0)
                {
                    return candidate;
                }
            }
            catch (System.ComponentModel.Win32Exception)
            {
                // not executable; try the next one
            }
        }

        return null;
    }

    private static (int ExitCode, string Output) Run(string fileName, string workingDirectory, params string[] args)
    {
        var start = new ProcessStartInfo(fileName)
        {
            WorkingDirectory = workingDirectory,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (string arg in args)
        {
            start.ArgumentList.Add(arg);
        }

        start.Environment["DOTNET_CLI_TELEMETRY_OPTOUT"] = "1";
        start.Environment["DOTNET_NOLOGO"] = "1";
        using var process = Process.Start(start) ?? throw new InvalidOperationException($"{fileName} did not start");
        Task<string> stdout = process.StandardOutput.ReadToEndAsync();
        Task<string> stderr = process.StandardError.ReadToEndAsync();
        if (!process.WaitForExit(TimeSpan.FromMinutes(9)))
        {
            process.Kill(entireProcessTree: true);
            return (-1, $"{fileName} {string.Join(' ', args)} did not finish within 9 minutes");
        }

        return (process.ExitCode, stdout.Result + stderr.Result);
    }
}
