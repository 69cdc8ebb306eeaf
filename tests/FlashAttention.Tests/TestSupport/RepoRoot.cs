namespace FlashAttn.Tests.TestSupport;

/// <summary>Finds the source tree (the folder holding FlashAttention.Interop.sln), if the tests run inside one.</summary>
internal static class RepoRoot
{
    public const string SolutionFile = "FlashAttention.Interop.sln";

    /// <summary>The repository root, or null (e.g. in the self-contained bundle on the GPU machine).</summary>
    public static string? Find()
    {
        foreach (string start in new[] { AppContext.BaseDirectory, Environment.CurrentDirectory })
        {
            for (var dir = new DirectoryInfo(start); dir is not null; dir = dir.Parent)
            {
                if (File.Exists(Path.Combine(dir.FullName, SolutionFile)))
                {
                    return dir.FullName;
                }
            }
        }

        return null;
    }
}
