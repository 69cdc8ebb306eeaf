using System.Globalization;
using System.Reflection;
using System.Runtime.InteropServices;
using System.Text;

namespace FlashAttn.Native;

/// <summary>
/// Finds and loads libflash_attention for the <see cref="NativeMethods"/> entry points and refuses a library
/// whose major version differs from the header the bindings were generated from.
/// </summary>
/// <remarks>
/// <para>
/// Call <see cref="EnsureLoaded"/> once before the first native call (the managed FlashAttn API does this
/// before its first use). It installs a <see cref="NativeLibrary.SetDllImportResolver"/> for this assembly,
/// loads the library, checks <c>fa_version()</c> and, on failure, throws an exception that lists every place
/// it looked. No module initializer is used; if a <see cref="NativeMethods"/> function is called first, the
/// resolver is not installed and the runtime's default search applies.
/// </para>
/// <para>Probing order, first hit wins:</para>
/// <list type="number">
/// <item><description>
/// The environment variable <c>FLASH_ATTENTION_NATIVE_PATH</c>: the library file or its folder. When it is set,
/// it is the only place tried, so a wrong value fails loudly instead of silently picking another copy.
/// </description></item>
/// <item><description><see cref="AppContext.BaseDirectory"/>, then the folder of this assembly.</description></item>
/// <item><description><c>runtimes/&lt;rid&gt;/native/</c> under the base directory (NuGet layout).</description></item>
/// <item><description><c>artifacts/native/</c> in the base directory or any folder above it (the development tree,
/// where <c>./build.sh build</c> puts the library).</description></item>
/// <item><description>The operating system's own search (<c>LD_LIBRARY_PATH</c>, the ldconfig cache).</description></item>
/// </list>
/// <para>All members are thread-safe; loading happens at most once per process.</para>
/// </remarks>
public static class NativeLibraryLoader
{
    /// <summary>Environment variable naming the library file, or the folder that holds it.</summary>
    public const string PathEnvironmentVariable = "FLASH_ATTENTION_NATIVE_PATH";

    private static readonly Lock Gate = new();
    private static bool s_resolverInstalled;
    private static nint s_handle;
    private static string? s_loadedPath;
    private static int s_loadedVersion;

    /// <summary>File name of the library on this operating system (libflash_attention.so on Linux).</summary>
    public static string LibraryFileName { get; } =
        OperatingSystem.IsWindows() ? NativeMethods.LibraryName + ".dll"
        : OperatingSystem.IsMacOS() ? "lib" + NativeMethods.LibraryName + ".dylib"
        : "lib" + NativeMethods.LibraryName + ".so";

    /// <summary>Full path of the loaded library, or null before a successful <see cref="EnsureLoaded"/>.</summary>
    public static string? LoadedPath => Volatile.Read(ref s_loadedPath);

    /// <summary>
    /// <c>fa_version()</c> of the loaded library (MAJOR * 10000 + MINOR * 100 + PATCH), or null before a
    /// successful <see cref="EnsureLoaded"/>.
    /// </summary>
    public static int? LoadedVersionCode => LoadedPath is null ? null : Volatile.Read(ref s_loadedVersion);

    /// <summary>
    /// Installs the resolver for this assembly's <c>[LibraryImport]</c>s. Idempotent and thread-safe; called by
    /// <see cref="EnsureLoaded"/>, so there is rarely a reason to call it alone.
    /// </summary>
    public static void InstallResolver()
    {
        lock (Gate)
        {
            if (s_resolverInstalled)
            {
                return;
            }
            NativeLibrary.SetDllImportResolver(typeof(NativeLibraryLoader).Assembly, Resolve);
            s_resolverInstalled = true;
        }
    }

    /// <summary>
    /// Installs the resolver, then finds, loads and version-checks the library (once; later calls return at
    /// once).
    /// </summary>
    /// <exception cref="DllNotFoundException">
    /// No usable library was found; the message lists every place tried and why each failed.
    /// </exception>
    /// <exception cref="InvalidOperationException">
    /// A library was loaded but its major version differs from <see cref="NativeMethods.FA_VERSION_MAJOR"/>.
    /// </exception>
    public static void EnsureLoaded()
    {
        InstallResolver();
        LoadOrThrow();
    }

    private static nint Resolve(string libraryName, Assembly assembly, DllImportSearchPath? searchPath)
    {
        // Only our library; everything else goes to the runtime's default search.
        return libraryName == NativeMethods.LibraryName ? LoadOrThrow() : 0;
    }

    private static nint LoadOrThrow()
    {
        lock (Gate)
        {
            if (s_handle != 0)
            {
                return s_handle;
            }
            var attempts = new List<string>();
            foreach ((string label, string? path) in Candidates(attempts))
            {
                nint handle;
                if (path is null)
                {
                    // The operating system's own search by file name.
                    if (!NativeLibrary.TryLoad(LibraryFileName, out handle))
                    {
                        attempts.Add($"{label}: not found");
                        continue;
                    }
                }
                else if (!File.Exists(path))
                {
                    attempts.Add($"{label}: not found");
                    continue;
                }
                else
                {
                    try
                    {
                        handle = NativeLibrary.Load(path);
                    }
                    catch (Exception e) when (e is DllNotFoundException or BadImageFormatException)
                    {
                        // The runtime's message ends with the loader's own reason (dlerror); keep that line.
                        string reason = e.Message.Trim().Split('\n')[^1].Trim();
                        attempts.Add($"{label}: exists but could not be loaded ({reason}); check its " +
                            "dependencies with ldd");
                        continue;
                    }
                }
                if (!NativeLibrary.TryGetExport(handle, "fa_version", out nint versionExport))
                {
                    attempts.Add($"{label}: loaded, but it exports no fa_version, so it is not libflash_attention");
                    NativeLibrary.Free(handle);
                    continue;
                }
                int version = CallVersion(versionExport);
                string where = path ?? LibraryFileName + " (system search)";
                if (version / 10000 != NativeMethods.FA_VERSION_MAJOR)
                {
                    NativeLibrary.Free(handle);
                    throw new InvalidOperationException(string.Format(CultureInfo.InvariantCulture,
                        "The FlashAttention native library at {0} is version {1}, but these bindings were generated " +
                        "from flash_attention.h version {2} and need major version {3}. Rebuild the native library " +
                        "(./build.sh build) or point {4} at a matching build.",
                        where, FormatVersion(version), FormatVersion(NativeMethods.FA_VERSION_CODE),
                        NativeMethods.FA_VERSION_MAJOR, PathEnvironmentVariable));
                }
                Volatile.Write(ref s_loadedVersion, version);
                Volatile.Write(ref s_loadedPath, path is null ? where : Path.GetFullPath(path));
                s_handle = handle;
                return handle;
            }
            throw new DllNotFoundException(FailureMessage(attempts));
        }
    }

    private static unsafe int CallVersion(nint export) => ((delegate* unmanaged[Cdecl]<int>)export)();

    private static string FormatVersion(int code) => string.Format(CultureInfo.InvariantCulture, "{0}.{1}.{2}",
        code / 10000, code / 100 % 100, code % 100);

    /// <summary>
    /// The places to try, as (label, path); a null path means the OS search. Entries that are skipped without
    /// a file check (an unset environment variable) go straight into <paramref name="attempts"/>.
    /// </summary>
    private static List<(string Label, string? Path)> Candidates(List<string> attempts)
    {
        var list = new List<(string, string?)>();
        var seen = new HashSet<string>(StringComparer.Ordinal);
        void Add(string label, string path)
        {
            string full = Path.GetFullPath(path);
            if (seen.Add(full))
            {
                list.Add((label, full));
            }
        }

        string? env = Environment.GetEnvironmentVariable(PathEnvironmentVariable);
        if (!string.IsNullOrWhiteSpace(env))
        {
            string path = Directory.Exists(env) ? Path.Combine(env, LibraryFileName) : env;
            list.Add(($"{PathEnvironmentVariable}={env} -> {Path.GetFullPath(path)}", Path.GetFullPath(path)));
            return list; // an explicit choice is the only one tried
        }
        attempts.Add($"{PathEnvironmentVariable}: not set");

        string baseDir = AppContext.BaseDirectory;
        Add(Path.Combine(baseDir, LibraryFileName), Path.Combine(baseDir, LibraryFileName));
        string assemblyDir = Path.GetDirectoryName(typeof(NativeLibraryLoader).Assembly.Location) ?? "";
        if (assemblyDir.Length > 0)
        {
            Add(Path.Combine(assemblyDir, LibraryFileName), Path.Combine(assemblyDir, LibraryFileName));
        }
        string os = OperatingSystem.IsWindows() ? "win" : OperatingSystem.IsMacOS() ? "osx" : "linux";
        string portableRid = os + "-" + RuntimeInformation.ProcessArchitecture.ToString().ToLowerInvariant();
        foreach (string rid in new[] { RuntimeInformation.RuntimeIdentifier, portableRid })
        {
            string path = Path.Combine(baseDir, "runtimes", rid, "native", LibraryFileName);
            Add(path, path);
        }
        for (DirectoryInfo? dir = new(baseDir); dir is not null; dir = dir.Parent)
        {
            string path = Path.Combine(dir.FullName, "artifacts", "native", LibraryFileName);
            Add(path, path);
        }
        list.Add(("the operating system's library search (LD_LIBRARY_PATH, ldconfig)", null));
        return list;
    }

    private static string FailureMessage(List<string> attempts)
    {
        var sb = new StringBuilder();
        sb.Append(CultureInfo.InvariantCulture,
            $"Could not load the FlashAttention native library ({LibraryFileName}). Looked in, in this order:");
        sb.AppendLine();
        for (int i = 0; i < attempts.Count; i++)
        {
            sb.Append(CultureInfo.InvariantCulture, $"  {i + 1}. {attempts[i]}").AppendLine();
        }
        sb.Append(CultureInfo.InvariantCulture,
            $"Build it with ./build.sh build (it lands in artifacts/native/), or set {PathEnvironmentVariable} " +
            $"to the library file or the folder that holds it.");
        return sb.ToString();
    }
}
