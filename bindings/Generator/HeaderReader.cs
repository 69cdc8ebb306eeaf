using System.Globalization;
using System.Text;

namespace FlashAttention.Bindings.Generator;

/// <summary>Thrown for anything in the header the generator cannot mirror faithfully.</summary>
internal sealed class GeneratorException(string message) : Exception(message);

/// <summary>
/// Parses the C header with libclang and builds the <see cref="HeaderModel"/>. The system's C headers are
/// never used: stddef.h and stdint.h are replaced by tiny stand-ins built on clang's predefined
/// __INT32_TYPE__-style macros, so the result depends only on the header and the target triple, never on
/// which libc headers or clang resource directory a machine has.
/// </summary>
internal sealed unsafe partial class HeaderReader
{
    private const string StddefStandIn = """
        /* Stand-in for <stddef.h> written by bindings/Generator. */
        #ifndef FA_GENERATOR_STDDEF_H
        #define FA_GENERATOR_STDDEF_H
        typedef __SIZE_TYPE__ size_t;
        typedef __PTRDIFF_TYPE__ ptrdiff_t;
        #define NULL ((void*)0)
        #define offsetof(type, member) __builtin_offsetof(type, member)
        #endif
        """;

    private const string StdintStandIn = """
        /* Stand-in for <stdint.h> written by bindings/Generator. */
        #ifndef FA_GENERATOR_STDINT_H
        #define FA_GENERATOR_STDINT_H
        typedef __INT8_TYPE__ int8_t;
        typedef __INT16_TYPE__ int16_t;
        typedef __INT32_TYPE__ int32_t;
        typedef __INT64_TYPE__ int64_t;
        typedef __UINT8_TYPE__ uint8_t;
        typedef __UINT16_TYPE__ uint16_t;
        typedef __UINT32_TYPE__ uint32_t;
        typedef __UINT64_TYPE__ uint64_t;
        typedef __INTPTR_TYPE__ intptr_t;
        typedef __UINTPTR_TYPE__ uintptr_t;
        #endif
        """;

    private static readonly HashSet<string> CSharpKeywords =
    [
        "abstract", "as", "base", "bool", "break", "byte", "case", "catch", "char", "checked", "class", "const",
        "continue", "decimal", "default", "delegate", "do", "double", "else", "enum", "event", "explicit", "extern",
        "false", "finally", "fixed", "float", "for", "foreach", "goto", "if", "implicit", "in", "int", "interface",
        "internal", "is", "lock", "long", "namespace", "new", "null", "object", "operator", "out", "override",
        "params", "private", "protected", "public", "readonly", "ref", "return", "sbyte", "sealed", "short",
        "sizeof", "stackalloc", "static", "string", "struct", "switch", "this", "throw", "true", "try", "typeof",
        "uint", "ulong", "unchecked", "unsafe", "ushort", "using", "virtual", "void", "volatile", "while",
    ];

    private readonly Settings _settings;
    private readonly string[] _headerLines;
    private IntPtr _tu;
    private readonly Dictionary<string, string> _typedefDocs = new(StringComparer.Ordinal);
    private readonly Dictionary<string, string> _recordNames = new(StringComparer.Ordinal);

    public HeaderReader(Settings settings)
    {
        _settings = settings;
        _headerLines = File.ReadAllText(settings.HeaderPath).Replace("\r\n", "\n", StringComparison.Ordinal)
            .Split('\n');
    }

    public HeaderModel Read()
    {
        Clang.InstallResolver();
        string includeDir = Directory.CreateTempSubdirectory("fa-generator-").FullName;
        IntPtr index = IntPtr.Zero;
        try
        {
            File.WriteAllText(Path.Combine(includeDir, "stddef.h"), StddefStandIn + "\n");
            File.WriteAllText(Path.Combine(includeDir, "stdint.h"), StdintStandIn + "\n");
            try
            {
                index = Clang.clang_createIndex(0, 0);
            }
            catch (DllNotFoundException e)
            {
                throw new GeneratorException(
                    "could not load libclang (" + e.Message + "). Looked in: " +
                    string.Join(", ", Clang.ProbedPaths) +
                    ". Run through `dotnet run --project bindings/Generator` so the libclang.runtime NuGet " +
                    "package is copied beside the generator, or set LIBCLANG_PATH to a libclang.so.");
            }
            if (_settings.Verbose)
            {
                Console.Error.WriteLine($"libclang: {Clang.LoadedFrom} ({Clang.Take(Clang.clang_getClangVersion())})");
            }
            _tu = Parse(index, includeDir);
            try
            {
                return BuildModel();
            }
            finally
            {
                Clang.clang_disposeTranslationUnit(_tu);
            }
        }
        finally
        {
            if (index != IntPtr.Zero)
            {
                Clang.clang_disposeIndex(index);
            }
            Directory.Delete(includeDir, recursive: true);
        }
    }

    private IntPtr Parse(IntPtr index, string includeDir)
    {
        string[] args =
        [
            "-x", "c", "-std=c99", "--target=" + _settings.Target, "-nostdinc", "-I", includeDir,
            "-fparse-all-comments", "-Wall", "-Wextra",
        ];
        var handles = new List<IntPtr>();
        try
        {
            IntPtr source = Utf8(_settings.HeaderPath, handles);
            var argv = new IntPtr[args.Length];
            for (int i = 0; i < args.Length; i++)
            {
                argv[i] = Utf8(args[i], handles);
            }
            IntPtr tu;
            int error;
            fixed (IntPtr* argvPtr = argv)
            {
                error = Clang.clang_parseTranslationUnit2(index, (byte*)source, (byte**)argvPtr, args.Length,
                    IntPtr.Zero, 0, Clang.DetailedPreprocessingRecord, &tu);
            }
            if (error != 0 || tu == IntPtr.Zero)
            {
                throw new GeneratorException($"libclang could not parse {_settings.HeaderPath} (CXErrorCode {error}).");
            }
            var errors = new List<string>();
            uint count = Clang.clang_getNumDiagnostics(tu);
            for (uint i = 0; i < count; i++)
            {
                IntPtr diagnostic = Clang.clang_getDiagnostic(tu, i);
                string text = Clang.Take(Clang.clang_formatDiagnostic(diagnostic,
                    Clang.clang_defaultDiagnosticDisplayOptions()));
                int severity = Clang.clang_getDiagnosticSeverity(diagnostic);
                Clang.clang_disposeDiagnostic(diagnostic);
                Console.Error.WriteLine(text);
                if (severity >= Clang.SeverityError)
                {
                    errors.Add(text);
                }
            }
            if (errors.Count > 0)
            {
                Clang.clang_disposeTranslationUnit(tu);
                throw new GeneratorException($"{_settings.HeaderPath} does not compile as C99:\n" +
                    string.Join("\n", errors));
            }
            return tu;
        }
        finally
        {
            foreach (IntPtr h in handles)
            {
                System.Runtime.InteropServices.Marshal.FreeHGlobal(h);
            }
        }
    }

    private static IntPtr Utf8(string text, List<IntPtr> handles)
    {
        byte[] bytes = Encoding.UTF8.GetBytes(text + "\0");
        IntPtr p = System.Runtime.InteropServices.Marshal.AllocHGlobal(bytes.Length);
        System.Runtime.InteropServices.Marshal.Copy(bytes, 0, p, bytes.Length);
        handles.Add(p);
        return p;
    }

    private HeaderModel BuildModel()
    {
        var macros = new List<MacroConstant>();
        var enums = new List<EnumModel>();
        var structs = new List<StructModel>();
        var functions = new List<FunctionModel>();
        var macroValues = new Dictionary<string, long>(StringComparer.Ordinal);
        List<CXCursor> top = Clang.Children(Clang.clang_getTranslationUnitCursor(_tu));

        // First pass: typedef names of tagged records and enums, and typedef docs.
        foreach (CXCursor c in top)
        {
            if (c.Kind != CursorKind.TypedefDecl || !IsFromMainFile(c))
            {
                continue;
            }
            string name = Clang.Spelling(c);
            string? doc = Doc(c);
            if (doc is not null)
            {
                _typedefDocs[name] = doc;
            }
            CXType underlying = Clang.clang_getCanonicalType(Clang.clang_getTypedefDeclUnderlyingType(c));
            if (underlying.Kind is TypeKind.Record or TypeKind.Enum)
            {
                string tag = Clang.Spelling(Clang.clang_getTypeDeclaration(underlying));
                _recordNames.TryAdd(tag, name);
            }
        }

        foreach (CXCursor c in top)
        {
            if (!IsFromMainFile(c))
            {
                continue;
            }
            switch (c.Kind)
            {
                case CursorKind.MacroDefinition:
                    MacroConstant? macro = ReadMacro(c, macroValues);
                    if (macro is not null)
                    {
                        macros.Add(macro);
                        macroValues[macro.Name] = macro.Value;
                    }
                    break;
                case CursorKind.EnumDecl:
                    enums.Add(ReadEnum(c));
                    break;
                case CursorKind.StructDecl:
                    StructModel? s = ReadStruct(c);
                    if (s is not null)
                    {
                        structs.Add(s);
                    }
                    break;
                case CursorKind.FunctionDecl:
                    functions.Add(ReadFunction(c));
                    break;
                default:
                    break;
            }
        }
        return new HeaderModel(macros, enums, structs, functions, _callbackTypes);
    }

    private static bool IsFromMainFile(CXCursor c) =>
        Clang.clang_Location_isFromMainFile(Clang.clang_getCursorLocation(c)) != 0;

    private static string? Doc(CXCursor c) => CleanComment(Clang.Take(Clang.clang_Cursor_getRawCommentText(c)));

    /// <summary>Strips comment markers and leading asterisks, keeping the line breaks.</summary>
    internal static string? CleanComment(string raw)
    {
        if (string.IsNullOrWhiteSpace(raw))
        {
            return null;
        }
        var lines = new List<string>();
        foreach (string rawLine in raw.Replace("\r\n", "\n", StringComparison.Ordinal).Split('\n'))
        {
            string line = rawLine.Trim();
            foreach (string opener in new[] { "/**<", "///<", "/**", "/*!", "/*", "///", "//!", "//" })
            {
                if (line.StartsWith(opener, StringComparison.Ordinal))
                {
                    line = line[opener.Length..];
                    break;
                }
            }
            if (line.EndsWith("*/", StringComparison.Ordinal))
            {
                line = line[..^2];
            }
            line = line.Trim();
            if (line.StartsWith('*'))
            {
                line = line.TrimStart('*').Trim();
            }
            lines.Add(line);
        }
        while (lines.Count > 0 && lines[0].Length == 0)
        {
            lines.RemoveAt(0);
        }
        while (lines.Count > 0 && lines[^1].Length == 0)
        {
            lines.RemoveAt(lines.Count - 1);
        }
        return lines.Count == 0 ? null : string.Join("\n", lines);
    }

    private uint LineOf(CXCursor c)
    {
        uint line;
        Clang.clang_getExpansionLocation(Clang.clang_getCursorLocation(c), null, &line, null, null);
        return line;
    }

    /// <summary>
    /// libclang attaches no comments to macros, so the comment is taken from the header text: the block
    /// comment (or // lines) right above the #define, or above the run of #defines it starts.
    /// </summary>
    private string? MacroDoc(uint line)
    {
        int i = (int)line - 2;
        while (i >= 0 && _headerLines[i].TrimStart().StartsWith("#define", StringComparison.Ordinal))
        {
            i--;
        }
        if (i < 0)
        {
            return null;
        }
        string current = _headerLines[i].Trim();
        if (current.EndsWith("*/", StringComparison.Ordinal))
        {
            int end = i;
            while (i >= 0 && !_headerLines[i].Contains("/*", StringComparison.Ordinal))
            {
                i--;
            }
            if (i < 0)
            {
                return null;
            }
            return CleanComment(string.Join("\n", _headerLines[i..(end + 1)]));
        }
        if (current.StartsWith("//", StringComparison.Ordinal))
        {
            int end = i;
            while (i >= 0 && _headerLines[i].Trim().StartsWith("//", StringComparison.Ordinal))
            {
                i--;
            }
            return CleanComment(string.Join("\n", _headerLines[(i + 1)..(end + 1)]));
        }
        return null;
    }

    private MacroConstant? ReadMacro(CXCursor c, Dictionary<string, long> known)
    {
        if (Clang.clang_Cursor_isMacroBuiltin(c) != 0 || Clang.clang_Cursor_isMacroFunctionLike(c) != 0)
        {
            return null;
        }
        string name = Clang.Spelling(c);
        if (!name.StartsWith(_settings.PrefixStrip, StringComparison.OrdinalIgnoreCase))
        {
            return null;
        }
        List<(int Kind, string Text)> tokens = Tokens(c);
        // The first token is the macro's name; the rest is its body.
        var body = tokens.Skip(1).Where(t => t.Kind != Clang.TokenComment).Select(t => t.Text).ToList();
        if (body.Count == 0)
        {
            return null;
        }
        long value;
        try
        {
            value = new ConstantExpression(body, known).Evaluate();
        }
        catch (FormatException)
        {
            return null; // not an integer constant (FA_API, include guards): not part of the bindings.
        }
        return new MacroConstant(name, value, string.Join(" ", body).Replace("( ", "(", StringComparison.Ordinal)
            .Replace(" )", ")", StringComparison.Ordinal), MacroDoc(LineOf(c)));
    }

    private List<(int Kind, string Text)> Tokens(CXCursor c)
    {
        CXToken* tokens;
        uint count;
        Clang.clang_tokenize(_tu, Clang.clang_getCursorExtent(c), &tokens, &count);
        var list = new List<(int, string)>((int)count);
        try
        {
            for (uint i = 0; i < count; i++)
            {
                list.Add((Clang.clang_getTokenKind(tokens[i]), Clang.Take(Clang.clang_getTokenSpelling(_tu, tokens[i]))));
            }
        }
        finally
        {
            Clang.clang_disposeTokens(_tu, tokens, count);
        }
        return list;
    }

    private EnumModel ReadEnum(CXCursor c)
    {
        string cName = Clang.Spelling(c);
        if (Clang.clang_Cursor_isAnonymous(c) != 0)
        {
            throw new GeneratorException($"anonymous enums are not supported; give the enum at line {LineOf(c)} a tag.");
        }
        var raw = new List<(string Name, long Value, string? Doc)>();
        foreach (CXCursor child in Clang.Children(c))
        {
            if (child.Kind == CursorKind.EnumConstantDecl)
            {
                raw.Add((Clang.Spelling(child), Clang.clang_getEnumConstantDeclValue(child), Doc(child)));
            }
        }
        if (raw.Count == 0)
        {
            throw new GeneratorException($"enum {cName} has no enumerators.");
        }
        foreach (var (name, value, _) in raw)
        {
            if (value is < int.MinValue or > int.MaxValue)
            {
                throw new GeneratorException($"{name} = {value} does not fit the int the C# enum {cName} is based on.");
            }
        }
        string prefix = CommonPrefix(raw.Select(r => r.Name).ToList(), cName);
        var members = raw.Select(r => new EnumMember(r.Name, PascalCase(r.Name[prefix.Length..]), r.Value, r.Doc)).ToList();
        _recordNames.TryGetValue(cName, out string? typedefName);
        return new EnumModel(cName, typedefName, TypeName(cName), members, Doc(c));
    }

    /// <summary>
    /// The longest run of whole underscore-separated words all names share, leaving every name at least one
    /// word that does not start with a digit. A one-member enum strips its own tag (FA_LOG_ for fa_log).
    /// </summary>
    internal static string CommonPrefix(IReadOnlyList<string> names, string tag)
    {
        if (names.Count == 1)
        {
            string own = tag.ToUpperInvariant() + "_";
            return names[0].StartsWith(own, StringComparison.Ordinal) && names[0].Length > own.Length ? own : "";
        }
        string[][] parts = names.Select(n => n.Split('_')).ToArray();
        int words = 0;
        while (parts.All(p => p.Length > words + 1 && p[words] == parts[0][words]))
        {
            words++;
        }
        while (words > 0 && parts.Any(p => char.IsAsciiDigit(p[words][0])))
        {
            words--;
        }
        return words == 0 ? "" : string.Join("_", parts[0].Take(words)) + "_";
    }

    /// <summary>fa_device_properties_t -> FaDeviceProperties; INVALID_ARGUMENT -> InvalidArgument.</summary>
    internal static string PascalCase(string name)
    {
        var sb = new StringBuilder();
        foreach (string part in name.Split('_', StringSplitOptions.RemoveEmptyEntries))
        {
            sb.Append(char.ToUpperInvariant(part[0]));
            sb.Append(part[1..].ToLowerInvariant());
        }
        string result = sb.ToString();
        return result.Length > 0 && char.IsAsciiDigit(result[0]) ? "_" + result : result;
    }

    private static string TypeName(string cTag)
    {
        string name = cTag.EndsWith("_t", StringComparison.Ordinal) ? cTag[..^2] : cTag;
        return PascalCase(name);
    }

    private static string Identifier(string name) => CSharpKeywords.Contains(name) ? "@" + name : name;

    private StructModel? ReadStruct(CXCursor c)
    {
        string cName = Clang.Spelling(c);
        CXType type = Clang.clang_getCursorType(c);
        long size = Clang.clang_Type_getSizeOf(type);
        if (size < 0)
        {
            return null; // a forward declaration such as struct fa_context: opaque, passed as a pointer.
        }
        if (Clang.clang_Cursor_isAnonymous(c) != 0)
        {
            throw new GeneratorException($"anonymous structs are not supported; give the struct at line {LineOf(c)} a tag.");
        }
        var fields = new List<FieldModel>();
        foreach (CXCursor child in Clang.Children(c))
        {
            if (child.Kind != CursorKind.FieldDecl)
            {
                continue;
            }
            string fieldName = Clang.Spelling(child);
            CXType fieldType = Clang.clang_getCursorType(child);
            long offsetBits;
            byte[] nameBytes = Encoding.UTF8.GetBytes(fieldName + "\0");
            fixed (byte* p = nameBytes)
            {
                offsetBits = Clang.clang_Type_getOffsetOf(type, p);
            }
            if (offsetBits < 0 || offsetBits % 8 != 0)
            {
                throw new GeneratorException($"{cName}.{fieldName}: bit-fields and unknown offsets are not supported.");
            }
            string cType = Clang.Spelling(fieldType);
            string? doc = Doc(child);
            CXType canonical = Clang.clang_getCanonicalType(fieldType);
            if (canonical.Kind == TypeKind.ConstantArray)
            {
                CXType element = Clang.clang_getArrayElementType(canonical);
                string csElement = MapType(element, Use.Field, $"{cName}.{fieldName}");
                if (!IsFixedBufferElement(csElement))
                {
                    throw new GeneratorException(
                        $"{cName}.{fieldName}: arrays of {Clang.Spelling(element)} cannot be a C# fixed buffer.");
                }
                fields.Add(new FieldModel(fieldName, Identifier(fieldName), csElement,
                    checked((int)Clang.clang_getArraySize(canonical)), offsetBits / 8, cType, doc,
                    MapPython(fieldType, $"{cName}.{fieldName}")));
            }
            else
            {
                fields.Add(new FieldModel(fieldName, Identifier(fieldName), MapType(fieldType, Use.Field,
                    $"{cName}.{fieldName}"), null, offsetBits / 8, cType, doc, MapPython(fieldType, $"{cName}.{fieldName}")));
            }
        }
        _recordNames.TryGetValue(cName, out string? typedefName);
        return new StructModel(cName, typedefName, TypeName(cName), size, Clang.clang_Type_getAlignOf(type), fields,
            Doc(c));
    }

    private static bool IsFixedBufferElement(string cs) =>
        cs is "byte" or "sbyte" or "short" or "ushort" or "int" or "uint" or "long" or "ulong" or "float" or "double";

    private FunctionModel ReadFunction(CXCursor c)
    {
        string name = Clang.Spelling(c);
        CXType fnType = Clang.clang_getCursorType(c);
        if (Clang.clang_isFunctionTypeVariadic(fnType) != 0)
        {
            throw new GeneratorException($"{name}: variadic functions cannot be bound.");
        }
        CXType result = Clang.clang_getCursorResultType(c);
        var notes = new List<string>();
        var parameters = new List<ParameterModel>();
        int n = Clang.clang_Cursor_getNumArguments(c);
        for (uint i = 0; i < n; i++)
        {
            CXCursor arg = Clang.clang_Cursor_getArgument(c, i);
            string argName = Clang.Spelling(arg);
            if (argName.Length == 0)
            {
                argName = "arg" + i.ToString(CultureInfo.InvariantCulture);
            }
            CXType argType = Clang.clang_getCursorType(arg);
            NoteTypedef(argType, notes);
            parameters.Add(new ParameterModel(argName, Identifier(argName),
                MapType(argType, Use.Parameter, $"{name}({argName})"), Clang.Spelling(argType),
                MapPython(argType, $"{name}({argName})")));
        }
        return new FunctionModel(name, MapType(result, Use.Return, name + " result"), Clang.Spelling(result),
            parameters, Doc(c), notes, MapPython(result, name + " result"));
    }

    /// <summary>Collects the comment of a documented typedef a signature uses (fa_log_callback_t).</summary>
    private void NoteTypedef(CXType type, List<string> notes)
    {
        while (type.Kind == TypeKind.Pointer)
        {
            type = Clang.clang_getPointeeType(type);
        }
        if (type.Kind == TypeKind.Elaborated)
        {
            type = Clang.clang_Type_getNamedType(type);
        }
        if (type.Kind == TypeKind.Typedef)
        {
            string name = Clang.Take(Clang.clang_getTypedefName(type));
            CXType canonical = Clang.clang_getCanonicalType(type);
            bool mirrored = canonical.Kind is TypeKind.Record or TypeKind.Enum;
            if (!mirrored && _typedefDocs.TryGetValue(name, out string? doc))
            {
                string note = $"{name}: {doc}";
                if (!notes.Contains(note))
                {
                    notes.Add(note);
                }
            }
        }
    }

    private enum Use
    {
        Field,
        Parameter,
        Return,
        FunctionPointer,
    }

    /// <summary>
    /// Maps a C type to a blittable C# type: fixed-width integers to int/long/..., size_t to nuint, void* and
    /// char* and opaque handles to nint, other pointers to typed pointers, enums and structs to their mirrors,
    /// function pointers to delegate* unmanaged[Cdecl].
    /// </summary>
    private string MapType(CXType type, Use use, string where)
    {
        if (type.Kind == TypeKind.Elaborated)
        {
            type = Clang.clang_Type_getNamedType(type);
        }
        if (type.Kind == TypeKind.Typedef)
        {
            string typedefName = Clang.Take(Clang.clang_getTypedefName(type));
            switch (typedefName)
            {
                case "size_t":
                case "uintptr_t":
                    return "nuint";
                case "ptrdiff_t":
                case "intptr_t":
                    return "nint";
                default:
                    break;
            }
            return MapType(Clang.clang_getCanonicalType(type), use, where);
        }
        switch (type.Kind)
        {
            case TypeKind.Void when use is Use.Return or Use.FunctionPointer:
                return "void";
            case TypeKind.CharS:
            case TypeKind.SChar:
                return use == Use.Field ? "byte" : "sbyte";
            case TypeKind.CharU:
            case TypeKind.UChar:
                return "byte";
            case TypeKind.Short:
                return "short";
            case TypeKind.UShort:
                return "ushort";
            case TypeKind.Int:
                return "int";
            case TypeKind.UInt:
                return "uint";
            case TypeKind.Long:
            case TypeKind.LongLong:
                return Clang.clang_Type_getSizeOf(type) == 8 ? "long" : "int";
            case TypeKind.ULong:
            case TypeKind.ULongLong:
                return Clang.clang_Type_getSizeOf(type) == 8 ? "ulong" : "uint";
            case TypeKind.Float:
                return "float";
            case TypeKind.Double:
                return "double";
            case TypeKind.Bool:
                throw new GeneratorException($"{where}: bool is not blittable; the ABI uses int32_t or uint8_t flags.");
            case TypeKind.Enum:
            {
                string tag = Clang.Spelling(Clang.clang_getTypeDeclaration(type));
                return TypeName(tag);
            }
            case TypeKind.Record:
            {
                CXCursor decl = Clang.clang_getTypeDeclaration(type);
                if (decl.Kind != CursorKind.StructDecl)
                {
                    throw new GeneratorException($"{where}: unions are not supported.");
                }
                if (use != Use.Field)
                {
                    throw new GeneratorException($"{where}: structs are passed by pointer in this ABI, not by value.");
                }
                return TypeName(Clang.Spelling(decl));
            }
            case TypeKind.Pointer:
                return MapPointer(type, use, where);
            default:
                throw new GeneratorException($"{where}: the C type '{Clang.Spelling(type)}' has no blittable C# mirror.");
        }
    }

    private string MapPointer(CXType type, Use use, string where)
    {
        CXType pointee = Clang.clang_getPointeeType(type);
        CXType canonical = Clang.clang_getCanonicalType(pointee);
        if (canonical.Kind is TypeKind.FunctionProto or TypeKind.FunctionNoProto)
        {
            if (canonical.Kind == TypeKind.FunctionNoProto || Clang.clang_isFunctionTypeVariadic(canonical) != 0)
            {
                throw new GeneratorException($"{where}: function pointers need a full, non-variadic prototype.");
            }
            var parts = new List<string>();
            int n = Clang.clang_getNumArgTypes(canonical);
            for (uint i = 0; i < n; i++)
            {
                parts.Add(MapType(Clang.clang_getArgType(canonical, i), Use.FunctionPointer, where));
            }
            parts.Add(MapType(Clang.clang_getResultType(canonical), Use.FunctionPointer, where));
            return "delegate* unmanaged[Cdecl]<" + string.Join(", ", parts) + ">";
        }
        if (use == Use.FunctionPointer)
        {
            return "nint";
        }
        switch (canonical.Kind)
        {
            case TypeKind.Void:
            case TypeKind.CharS:
            case TypeKind.CharU:
                return "nint"; // void* (device memory, streams, events) and const char* (read with NativeUtf8).
            case TypeKind.Record when Clang.clang_Type_getSizeOf(canonical) < 0:
                return "nint"; // an opaque handle such as fa_context_t.
            default:
                break;
        }
        return MapType(pointee, Use.Field, where) + "*";
    }
}
