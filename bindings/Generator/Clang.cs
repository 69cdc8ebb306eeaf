// The part of libclang's C API (clang-c/Index.h) the generator uses, declared by hand with blittable
// signatures. libclang's C API is stable across versions, so these declarations fit any libclang >= 14.
using System.Reflection;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace FlashAttention.Bindings.Generator;

[StructLayout(LayoutKind.Sequential)]
internal struct CXString
{
    public IntPtr Data;
    public uint PrivateFlags;
}

[StructLayout(LayoutKind.Sequential)]
internal struct CXCursor
{
    public int Kind;
    public int Xdata;
    public IntPtr Data0;
    public IntPtr Data1;
    public IntPtr Data2;
}

[StructLayout(LayoutKind.Sequential)]
internal struct CXType
{
    public int Kind;
    public IntPtr Data0;
    public IntPtr Data1;
}

[StructLayout(LayoutKind.Sequential)]
internal struct CXSourceLocation
{
    public IntPtr Ptr0;
    public IntPtr Ptr1;
    public uint IntData;
}

[StructLayout(LayoutKind.Sequential)]
internal struct CXSourceRange
{
    public IntPtr Ptr0;
    public IntPtr Ptr1;
    public uint BeginIntData;
    public uint EndIntData;
}

[StructLayout(LayoutKind.Sequential)]
internal struct CXToken
{
    public uint Int0;
    public uint Int1;
    public uint Int2;
    public uint Int3;
    public IntPtr PtrData;
}

/// <summary>Cursor kinds (CXCursorKind) the generator looks at.</summary>
internal static class CursorKind
{
    public const int StructDecl = 2;
    public const int EnumDecl = 5;
    public const int FieldDecl = 6;
    public const int EnumConstantDecl = 7;
    public const int FunctionDecl = 8;
    public const int ParmDecl = 10;
    public const int TypedefDecl = 20;
    public const int MacroDefinition = 501;
}

/// <summary>Type kinds (CXTypeKind) the generator maps.</summary>
internal static class TypeKind
{
    public const int Void = 2;
    public const int Bool = 3;
    public const int CharU = 4;
    public const int UChar = 5;
    public const int UShort = 8;
    public const int UInt = 9;
    public const int ULong = 10;
    public const int ULongLong = 11;
    public const int CharS = 13;
    public const int SChar = 14;
    public const int Short = 16;
    public const int Int = 17;
    public const int Long = 18;
    public const int LongLong = 19;
    public const int Float = 21;
    public const int Double = 22;
    public const int Pointer = 101;
    public const int Record = 105;
    public const int Enum = 106;
    public const int Typedef = 107;
    public const int FunctionNoProto = 110;
    public const int FunctionProto = 111;
    public const int ConstantArray = 112;
    public const int Elaborated = 119;
}

internal static unsafe partial class Clang
{
    private const string Lib = "libclang";

    public const uint DetailedPreprocessingRecord = 0x01;
    public const int ChildVisitContinue = 1;
    public const int SeverityError = 3;
    public const int TokenIdentifier = 2;
    public const int TokenLiteral = 3;
    public const int TokenComment = 4;

    [LibraryImport(Lib)]
    public static partial IntPtr clang_createIndex(int excludeDeclarationsFromPch, int displayDiagnostics);

    [LibraryImport(Lib)]
    public static partial void clang_disposeIndex(IntPtr index);

    [LibraryImport(Lib)]
    public static partial int clang_parseTranslationUnit2(IntPtr index, byte* sourceFilename, byte** commandLineArgs,
        int numCommandLineArgs, IntPtr unsavedFiles, uint numUnsavedFiles, uint options, IntPtr* translationUnit);

    [LibraryImport(Lib)]
    public static partial void clang_disposeTranslationUnit(IntPtr translationUnit);

    [LibraryImport(Lib)]
    public static partial uint clang_getNumDiagnostics(IntPtr translationUnit);

    [LibraryImport(Lib)]
    public static partial IntPtr clang_getDiagnostic(IntPtr translationUnit, uint index);

    [LibraryImport(Lib)]
    public static partial int clang_getDiagnosticSeverity(IntPtr diagnostic);

    [LibraryImport(Lib)]
    public static partial CXString clang_formatDiagnostic(IntPtr diagnostic, uint options);

    [LibraryImport(Lib)]
    public static partial uint clang_defaultDiagnosticDisplayOptions();

    [LibraryImport(Lib)]
    public static partial void clang_disposeDiagnostic(IntPtr diagnostic);

    [LibraryImport(Lib)]
    public static partial CXCursor clang_getTranslationUnitCursor(IntPtr translationUnit);

    [LibraryImport(Lib)]
    public static partial uint clang_visitChildren(CXCursor parent,
        delegate* unmanaged[Cdecl]<CXCursor, CXCursor, IntPtr, int> visitor, IntPtr clientData);

    [LibraryImport(Lib)]
    public static partial CXString clang_getCursorSpelling(CXCursor cursor);

    [LibraryImport(Lib)]
    public static partial CXType clang_getCursorType(CXCursor cursor);

    [LibraryImport(Lib)]
    public static partial CXType clang_getCursorResultType(CXCursor cursor);

    [LibraryImport(Lib)]
    public static partial CXType clang_getTypedefDeclUnderlyingType(CXCursor cursor);

    [LibraryImport(Lib)]
    public static partial long clang_getEnumConstantDeclValue(CXCursor cursor);

    [LibraryImport(Lib)]
    public static partial CXType clang_getEnumDeclIntegerType(CXCursor cursor);

    [LibraryImport(Lib)]
    public static partial CXString clang_Cursor_getRawCommentText(CXCursor cursor);

    [LibraryImport(Lib)]
    public static partial int clang_Cursor_getNumArguments(CXCursor cursor);

    [LibraryImport(Lib)]
    public static partial CXCursor clang_Cursor_getArgument(CXCursor cursor, uint index);

    [LibraryImport(Lib)]
    public static partial uint clang_Cursor_isMacroFunctionLike(CXCursor cursor);

    [LibraryImport(Lib)]
    public static partial uint clang_Cursor_isMacroBuiltin(CXCursor cursor);

    [LibraryImport(Lib)]
    public static partial uint clang_Cursor_isAnonymous(CXCursor cursor);

    [LibraryImport(Lib)]
    public static partial CXSourceLocation clang_getCursorLocation(CXCursor cursor);

    [LibraryImport(Lib)]
    public static partial CXSourceRange clang_getCursorExtent(CXCursor cursor);

    [LibraryImport(Lib)]
    public static partial int clang_Location_isFromMainFile(CXSourceLocation location);

    [LibraryImport(Lib)]
    public static partial void clang_getExpansionLocation(CXSourceLocation location, IntPtr* file, uint* line,
        uint* column, uint* offset);

    [LibraryImport(Lib)]
    public static partial void clang_tokenize(IntPtr translationUnit, CXSourceRange range, CXToken** tokens,
        uint* numTokens);

    [LibraryImport(Lib)]
    public static partial void clang_disposeTokens(IntPtr translationUnit, CXToken* tokens, uint numTokens);

    [LibraryImport(Lib)]
    public static partial int clang_getTokenKind(CXToken token);

    [LibraryImport(Lib)]
    public static partial CXString clang_getTokenSpelling(IntPtr translationUnit, CXToken token);

    [LibraryImport(Lib)]
    public static partial CXType clang_getCanonicalType(CXType type);

    [LibraryImport(Lib)]
    public static partial CXString clang_getTypeSpelling(CXType type);

    [LibraryImport(Lib)]
    public static partial CXString clang_getTypedefName(CXType type);

    [LibraryImport(Lib)]
    public static partial CXType clang_getPointeeType(CXType type);

    [LibraryImport(Lib)]
    public static partial CXType clang_getArrayElementType(CXType type);

    [LibraryImport(Lib)]
    public static partial long clang_getArraySize(CXType type);

    [LibraryImport(Lib)]
    public static partial long clang_Type_getSizeOf(CXType type);

    [LibraryImport(Lib)]
    public static partial long clang_Type_getAlignOf(CXType type);

    [LibraryImport(Lib)]
    public static partial long clang_Type_getOffsetOf(CXType type, byte* fieldName);

    [LibraryImport(Lib)]
    public static partial CXType clang_Type_getNamedType(CXType type);

    [LibraryImport(Lib)]
    public static partial CXCursor clang_getTypeDeclaration(CXType type);

    [LibraryImport(Lib)]
    public static partial CXType clang_getResultType(CXType type);

    [LibraryImport(Lib)]
    public static partial int clang_getNumArgTypes(CXType type);

    [LibraryImport(Lib)]
    public static partial CXType clang_getArgType(CXType type, uint index);

    [LibraryImport(Lib)]
    public static partial uint clang_isConstQualifiedType(CXType type);

    [LibraryImport(Lib)]
    public static partial uint clang_isFunctionTypeVariadic(CXType type);

    [LibraryImport(Lib)]
    public static partial CXString clang_getClangVersion();

    [LibraryImport(Lib)]
    private static partial IntPtr clang_getCString(CXString text);

    [LibraryImport(Lib)]
    private static partial void clang_disposeString(CXString text);

    /// <summary>Copies a CXString into a managed string and disposes it.</summary>
    public static string Take(CXString text)
    {
        try
        {
            IntPtr p = clang_getCString(text);
            return p == IntPtr.Zero ? string.Empty : Marshal.PtrToStringUTF8(p) ?? string.Empty;
        }
        finally
        {
            clang_disposeString(text);
        }
    }

    public static string Spelling(CXCursor cursor) => Take(clang_getCursorSpelling(cursor));

    public static string Spelling(CXType type) => Take(clang_getTypeSpelling(type));

    [ThreadStatic]
    private static List<CXCursor>? s_children;

    [UnmanagedCallersOnly(CallConvs = [typeof(CallConvCdecl)])]
    private static int CollectChild(CXCursor cursor, CXCursor parent, IntPtr clientData)
    {
        s_children!.Add(cursor);
        return ChildVisitContinue;
    }

    /// <summary>The direct children of a cursor, in source order.</summary>
    public static List<CXCursor> Children(CXCursor parent)
    {
        var previous = s_children;
        var list = new List<CXCursor>();
        s_children = list;
        try
        {
            clang_visitChildren(parent, &CollectChild, IntPtr.Zero);
        }
        finally
        {
            s_children = previous;
        }
        return list;
    }

    private static int s_resolverInstalled;

    /// <summary>
    /// Finds libclang: LIBCLANG_PATH (a file), the copy the libclang.runtime NuGet package puts under
    /// runtimes/&lt;rid&gt;/native beside the generator, and last the system's libclang.
    /// </summary>
    public static void InstallResolver()
    {
        if (Interlocked.Exchange(ref s_resolverInstalled, 1) != 0)
        {
            return;
        }
        NativeLibrary.SetDllImportResolver(typeof(Clang).Assembly, Resolve);
    }

    public static readonly List<string> ProbedPaths = [];

    /// <summary>The libclang file (or system name) the resolver loaded, if it loaded one.</summary>
    public static string? LoadedFrom { get; private set; }

    private static IntPtr Resolve(string name, Assembly assembly, DllImportSearchPath? searchPath)
    {
        if (name != Lib)
        {
            return IntPtr.Zero;
        }
        var candidates = new List<string>();
        string? env = Environment.GetEnvironmentVariable("LIBCLANG_PATH");
        if (!string.IsNullOrEmpty(env))
        {
            candidates.Add(Directory.Exists(env) ? Path.Combine(env, "libclang.so") : env);
        }
        string baseDir = AppContext.BaseDirectory;
        string fileName = OperatingSystem.IsWindows() ? "libclang.dll"
            : OperatingSystem.IsMacOS() ? "libclang.dylib" : "libclang.so";
        candidates.Add(Path.Combine(baseDir, "runtimes", RuntimeInformation.RuntimeIdentifier, "native", fileName));
        string arch = RuntimeInformation.ProcessArchitecture.ToString().ToLowerInvariant();
        string os = OperatingSystem.IsWindows() ? "win" : OperatingSystem.IsMacOS() ? "osx" : "linux";
        candidates.Add(Path.Combine(baseDir, "runtimes", $"{os}-{arch}", "native", fileName));
        candidates.Add(Path.Combine(baseDir, fileName));
        foreach (string candidate in candidates)
        {
            ProbedPaths.Add(candidate);
            if (File.Exists(candidate) && NativeLibrary.TryLoad(candidate, out IntPtr handle))
            {
                LoadedFrom = candidate;
                return handle;
            }
        }
        foreach (string system in new[] { "libclang.so", "libclang-14.so.1", "libclang.so.1" })
        {
            ProbedPaths.Add(system + " (system search)");
            if (NativeLibrary.TryLoad(system, out IntPtr handle))
            {
                LoadedFrom = system + " (system search)";
                return handle;
            }
        }
        return IntPtr.Zero;
    }
}
