using System.Text;

namespace FlashAttention.Bindings.Generator;

/// <summary>
/// Generator settings, normally read from bindings/generate.rsp (@file arguments are expanded; # starts a
/// comment line). Paths are relative to the repository root, which is found by walking up from the current
/// directory to FlashAttention.Interop.sln unless --root is given.
/// </summary>
internal sealed class Settings
{
    public required string Root { get; init; }
    public required string HeaderPath { get; init; }
    public required string HeaderDisplay { get; init; }
    public required string Namespace { get; init; }
    public required string LibraryName { get; init; }
    public required string PrefixStrip { get; init; }
    public required string OutputDir { get; init; }
    public required string TestOutput { get; init; }
    public required string TestNamespace { get; init; }
    /// <summary>Full path of the generated Python (ctypes) module, or null when none is generated.</summary>
    public required string? PythonOutput { get; init; }
    public required string Target { get; init; }
    public required bool Check { get; init; }
    public required bool Verbose { get; init; }

    public const string Usage = """
        usage: dotnet run --project bindings/Generator -- @bindings/generate.rsp [--check]
          --root DIR            repository root (default: walk up to FlashAttention.Interop.sln)
          --header FILE         the C header to mirror
          --namespace NAME      namespace of the generated bindings
          --library NAME        library name for [LibraryImport]
          --prefix-strip PFX    only fa_-prefixed declarations are mirrored; enumerators lose their common prefix
          --output DIR          folder for the generated *.g.cs bindings
          --test-output FILE    file for the generated NUnit layout tests
          --test-namespace NAME namespace of the layout tests
          --python-output FILE  optional: the generated Python ctypes module (constants, structs, prototypes)
          --target TRIPLE       clang target triple whose layout is mirrored (default x86_64-unknown-linux-gnu)
          --check               generate in memory; exit 1 if any file on disk differs (2 on errors)
          --verbose             print which libclang was loaded
        """;

    public static Settings Parse(string[] args)
    {
        var expanded = new List<string>();
        foreach (string arg in args)
        {
            Expand(arg, expanded, depth: 0);
        }
        var values = new Dictionary<string, string>(StringComparer.Ordinal);
        bool check = false;
        bool verbose = false;
        for (int i = 0; i < expanded.Count; i++)
        {
            string a = expanded[i];
            if (a == "--check")
            {
                check = true;
                continue;
            }
            if (a == "--verbose")
            {
                verbose = true;
                continue;
            }
            if (a is "-h" or "--help")
            {
                throw new GeneratorException(Usage);
            }
            if (!a.StartsWith("--", StringComparison.Ordinal) || i + 1 >= expanded.Count)
            {
                throw new GeneratorException($"unexpected argument '{a}'.\n{Usage}");
            }
            values[a[2..]] = expanded[++i];
        }
        string[] allowed = ["root", "header", "namespace", "library", "prefix-strip", "output", "test-output",
            "test-namespace", "target", "python-output"];
        foreach (string key in values.Keys)
        {
            if (!allowed.Contains(key))
            {
                throw new GeneratorException($"unknown option --{key}.\n{Usage}");
            }
        }
        string Need(string key) => values.TryGetValue(key, out string? v)
            ? v
            : throw new GeneratorException($"missing --{key} (normally set in bindings/generate.rsp).\n{Usage}");

        string root = values.TryGetValue("root", out string? r) ? Path.GetFullPath(r) : FindRoot(s_firstResponseFile);
        string header = Need("header");
        return new Settings
        {
            Root = root,
            HeaderPath = Path.GetFullPath(Path.Combine(root, header)),
            HeaderDisplay = header.Replace('\\', '/'),
            Namespace = Need("namespace"),
            LibraryName = Need("library"),
            PrefixStrip = Need("prefix-strip"),
            OutputDir = Path.GetFullPath(Path.Combine(root, Need("output"))),
            TestOutput = Path.GetFullPath(Path.Combine(root, Need("test-output"))),
            TestNamespace = Need("test-namespace"),
            PythonOutput = values.TryGetValue("python-output", out string? py)
                ? Path.GetFullPath(Path.Combine(root, py))
                : null,
            Target = values.TryGetValue("target", out string? t) ? t : "x86_64-unknown-linux-gnu",
            Check = check,
            Verbose = verbose,
        };
    }

    private static void Expand(string arg, List<string> into, int depth)
    {
        if (!arg.StartsWith('@'))
        {
            into.Add(arg);
            return;
        }
        if (depth > 8)
        {
            throw new GeneratorException("response files nest too deeply.");
        }
        string path = arg[1..];
        if (!File.Exists(path))
        {
            string fromRoot = Path.Combine(FindRoot(), path);
            path = File.Exists(fromRoot) ? fromRoot : throw new GeneratorException($"response file {arg[1..]} not found.");
        }
        s_firstResponseFile ??= Path.GetFullPath(path);
        foreach (string line in File.ReadAllLines(path))
        {
            string trimmed = line.Trim();
            if (trimmed.Length == 0 || trimmed.StartsWith('#'))
            {
                continue;
            }
            foreach (string token in Split(trimmed))
            {
                Expand(token, into, depth + 1);
            }
        }
    }

    /// <summary>Splits a line on whitespace, honouring double quotes.</summary>
    private static List<string> Split(string line)
    {
        var tokens = new List<string>();
        var current = new StringBuilder();
        bool quoted = false;
        bool any = false;
        foreach (char ch in line)
        {
            if (ch == '"')
            {
                quoted = !quoted;
                any = true;
            }
            else if (char.IsWhiteSpace(ch) && !quoted)
            {
                if (any)
                {
                    tokens.Add(current.ToString());
                    current.Clear();
                    any = false;
                }
            }
            else
            {
                current.Append(ch);
                any = true;
            }
        }
        if (any)
        {
            tokens.Add(current.ToString());
        }
        return tokens;
    }

    private static string? s_firstResponseFile;

    /// <summary>Walks up from the current directory, then from the first response file, to the solution.</summary>
    private static string FindRoot(string? responseFile = null)
    {
        var starts = new List<string> { Directory.GetCurrentDirectory() };
        if (responseFile is not null)
        {
            starts.Add(Path.GetDirectoryName(responseFile)!);
        }
        foreach (string start in starts)
        {
            for (string? dir = start; dir is not null; dir = Path.GetDirectoryName(dir))
            {
                if (File.Exists(Path.Combine(dir, "FlashAttention.Interop.sln")))
                {
                    return dir;
                }
            }
        }
        throw new GeneratorException(
            "could not find FlashAttention.Interop.sln above the current directory; run from the repository or pass --root.");
    }

    /// <summary>A path relative to the repository root, with forward slashes, for messages and banners.</summary>
    public string Relative(string fullPath) => Path.GetRelativePath(Root, fullPath).Replace('\\', '/');
}
