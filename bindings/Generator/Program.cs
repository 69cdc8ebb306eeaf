// bindings/Generator: reads native/include/flash_attention.h through libclang and writes the P/Invoke layer
// (bindings/FlashAttention.Native/Generated/*.g.cs), the struct-layout tests and, with --python-output, the
// Python ctypes mirror (bench/fa_abi.py).
//
//   dotnet run --project bindings/Generator -- @bindings/generate.rsp            write the files
//   dotnet run --project bindings/Generator -- @bindings/generate.rsp --check    exit 1 if any is stale
using System.Text;

namespace FlashAttention.Bindings.Generator;

internal static class Program
{
    private static int Main(string[] args)
    {
        Settings settings;
        try
        {
            settings = Settings.Parse(args);
            if (!File.Exists(settings.HeaderPath))
            {
                throw new GeneratorException($"header {settings.HeaderPath} not found.");
            }
            HeaderModel model = new HeaderReader(settings).Read();
            SortedDictionary<string, string> files = new Emitter(settings, model).Emit();
            return settings.Check ? Check(settings, files) : Write(settings, files);
        }
        catch (GeneratorException e)
        {
            Console.Error.WriteLine("generator: error: " + e.Message);
            return 2;
        }
    }

    private static int Write(Settings settings, SortedDictionary<string, string> files)
    {
        foreach ((string path, string text) in files)
        {
            string rel = settings.Relative(path);
            if (File.Exists(path) && ReadNormalized(path) == text)
            {
                Console.WriteLine($"unchanged {rel}");
                continue;
            }
            Directory.CreateDirectory(Path.GetDirectoryName(path)!);
            File.WriteAllText(path, text, new UTF8Encoding(encoderShouldEmitUTF8Identifier: false));
            Console.WriteLine($"wrote     {rel}");
        }
        foreach (string orphan in Orphans(settings, files))
        {
            File.Delete(orphan);
            Console.WriteLine($"deleted   {settings.Relative(orphan)} (no longer generated)");
        }
        return 0;
    }

    /// <summary>*.g.cs files in the output folder that this run does not produce.</summary>
    private static IEnumerable<string> Orphans(Settings settings, SortedDictionary<string, string> files) =>
        Directory.Exists(settings.OutputDir)
            ? Directory.GetFiles(settings.OutputDir, "*.g.cs").Select(Path.GetFullPath).Where(p => !files.ContainsKey(p))
                .Order(StringComparer.Ordinal)
            : [];

    private static int Check(Settings settings, SortedDictionary<string, string> files)
    {
        var stale = new List<string>();
        foreach ((string path, string expected) in files)
        {
            string rel = settings.Relative(path);
            if (!File.Exists(path))
            {
                stale.Add($"{rel}: missing");
                continue;
            }
            string actual = ReadNormalized(path);
            if (actual != expected)
            {
                stale.Add($"{rel}: {DiffSummary(expected, actual)}");
            }
        }
        foreach (string orphan in Orphans(settings, files))
        {
            stale.Add($"{settings.Relative(orphan)}: not produced by the generator any more");
        }
        if (stale.Count == 0)
        {
            Console.WriteLine($"bindings are up to date with {settings.HeaderDisplay} ({files.Count} files).");
            return 0;
        }
        Console.Error.WriteLine($"generator --check: {stale.Count} generated file(s) are stale with respect to {settings.HeaderDisplay}:");
        foreach (string s in stale)
        {
            Console.Error.WriteLine("  " + s);
        }
        Console.Error.WriteLine("Regenerate with: dotnet run --project bindings/Generator -- @bindings/generate.rsp");
        return 1;
    }

    /// <summary>File text with CRLF read as LF, so a Windows checkout (core.autocrlf) is not reported stale.</summary>
    private static string ReadNormalized(string path) =>
        File.ReadAllText(path).Replace("\r\n", "\n", StringComparison.Ordinal);

    /// <summary>Counts lines only on one side and shows the first line that differs.</summary>
    private static string DiffSummary(string expected, string actual)
    {
        string[] e = expected.Split('\n');
        string[] a = actual.Split('\n');
        int first = 0;
        while (first < e.Length && first < a.Length && e[first] == a[first])
        {
            first++;
        }
        var remaining = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (string line in a)
        {
            remaining[line] = remaining.GetValueOrDefault(line) + 1;
        }
        int added = 0;
        foreach (string line in e)
        {
            if (remaining.GetValueOrDefault(line) > 0)
            {
                remaining[line]--;
            }
            else
            {
                added++;
            }
        }
        int removed = remaining.Values.Sum();
        string want = first < e.Length ? e[first].Trim() : "<end of file>";
        string have = first < a.Length ? a[first].Trim() : "<end of file>";
        return $"{added} line(s) to add, {removed} to remove; first difference at line {first + 1}: " +
            $"expected `{want}`, found `{have}`";
    }
}
