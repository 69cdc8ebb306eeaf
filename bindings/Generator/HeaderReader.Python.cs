namespace FlashAttention.Bindings.Generator;

/// <summary>The ctypes side of the type mapping: each C type as the ctypes expression the Python module uses.</summary>
internal sealed unsafe partial class HeaderReader
{
    private readonly List<CallbackTypeModel> _callbackTypes = [];

    /// <summary>ctypes classes of the fixed-width integer typedefs, by name (what stdint.h spells).</summary>
    private static readonly Dictionary<string, string> PythonTypedefs = new(StringComparer.Ordinal)
    {
        ["int8_t"] = "ctypes.c_int8",
        ["int16_t"] = "ctypes.c_int16",
        ["int32_t"] = "ctypes.c_int32",
        ["int64_t"] = "ctypes.c_int64",
        ["uint8_t"] = "ctypes.c_uint8",
        ["uint16_t"] = "ctypes.c_uint16",
        ["uint32_t"] = "ctypes.c_uint32",
        ["uint64_t"] = "ctypes.c_uint64",
        ["size_t"] = "ctypes.c_size_t",
        ["uintptr_t"] = "ctypes.c_size_t",
        ["ptrdiff_t"] = "ctypes.c_ssize_t",
        ["intptr_t"] = "ctypes.c_ssize_t",
    };

    /// <summary>
    /// Maps a C type to a ctypes expression: fixed-width integers to c_int32 and friends, size_t to c_size_t, enums
    /// to their integer type, structs to the mirror class (by the C# mirror's name), void* and opaque handles to
    /// c_void_p, char* to c_char_p, other pointers to POINTER(...), arrays to (element * n), function-pointer
    /// typedefs to their name (defined as a CFUNCTYPE in the module), void to None.
    /// </summary>
    private string MapPython(CXType type, string where)
    {
        if (type.Kind == TypeKind.Elaborated)
        {
            type = Clang.clang_Type_getNamedType(type);
        }
        if (type.Kind == TypeKind.Typedef)
        {
            string name = Clang.Take(Clang.clang_getTypedefName(type));
            if (name.StartsWith("const ", StringComparison.Ordinal))
            {
                name = name["const ".Length..];
            }
            if (PythonTypedefs.TryGetValue(name, out string? fixedWidth))
            {
                return fixedWidth;
            }
            CXType canonical = Clang.clang_getCanonicalType(type);
            if (canonical.Kind == TypeKind.Pointer &&
                Clang.clang_getCanonicalType(Clang.clang_getPointeeType(canonical)).Kind == TypeKind.FunctionProto)
            {
                if (_callbackTypes.All(t => t.Name != name))
                {
                    // The typedef as written (not the canonical type), so its parameters keep names like int32_t.
                    CXType written = Clang.clang_getTypedefDeclUnderlyingType(Clang.clang_getTypeDeclaration(type));
                    _callbackTypes.Add(new CallbackTypeModel(name, MapPython(written, where),
                        _typedefDocs.GetValueOrDefault(name)));
                }
                return name;
            }
            return MapPython(canonical, where);
        }
        switch (type.Kind)
        {
            case TypeKind.Void:
                return "None";
            case TypeKind.CharS:
            case TypeKind.CharU:
                return "ctypes.c_char";
            case TypeKind.SChar:
                return "ctypes.c_byte";
            case TypeKind.UChar:
                return "ctypes.c_ubyte";
            case TypeKind.Short:
                return "ctypes.c_short";
            case TypeKind.UShort:
                return "ctypes.c_ushort";
            case TypeKind.Int:
                return "ctypes.c_int";
            case TypeKind.UInt:
                return "ctypes.c_uint";
            case TypeKind.Long:
                return "ctypes.c_long";
            case TypeKind.ULong:
                return "ctypes.c_ulong";
            case TypeKind.LongLong:
                return "ctypes.c_longlong";
            case TypeKind.ULongLong:
                return "ctypes.c_ulonglong";
            case TypeKind.Float:
                return "ctypes.c_float";
            case TypeKind.Double:
                return "ctypes.c_double";
            case TypeKind.Bool:
                throw new GeneratorException($"{where}: bool is not blittable; the ABI uses int32_t or uint8_t flags.");
            case TypeKind.Enum:
                // The integer type the compiler gives the enum (unsigned int for fa_status_t on x86-64).
                return MapPython(Clang.clang_getEnumDeclIntegerType(Clang.clang_getTypeDeclaration(type)), where);
            case TypeKind.Record:
            {
                CXCursor decl = Clang.clang_getTypeDeclaration(type);
                if (decl.Kind != CursorKind.StructDecl)
                {
                    throw new GeneratorException($"{where}: unions are not supported.");
                }
                return TypeName(Clang.Spelling(decl));
            }
            case TypeKind.ConstantArray:
                return $"({MapPython(Clang.clang_getArrayElementType(type), where)} * " +
                    $"{Clang.clang_getArraySize(type).ToString(System.Globalization.CultureInfo.InvariantCulture)})";
            case TypeKind.Pointer:
                return MapPythonPointer(type, where);
            default:
                throw new GeneratorException($"{where}: the C type '{Clang.Spelling(type)}' has no ctypes mirror.");
        }
    }

    private string MapPythonPointer(CXType type, string where)
    {
        CXType pointee = Clang.clang_getPointeeType(type);
        CXType canonical = Clang.clang_getCanonicalType(pointee);
        switch (canonical.Kind)
        {
            case TypeKind.FunctionProto:
            {
                // Parameter types as written where libclang exposes them (int32_t rather than int).
                CXType fn = pointee.Kind == TypeKind.FunctionProto ? pointee : canonical;
                if (Clang.clang_isFunctionTypeVariadic(canonical) != 0)
                {
                    throw new GeneratorException($"{where}: function pointers need a full, non-variadic prototype.");
                }
                var parts = new List<string> { MapPython(Clang.clang_getResultType(fn), where) };
                int n = Clang.clang_getNumArgTypes(fn);
                for (uint i = 0; i < n; i++)
                {
                    parts.Add(MapPython(Clang.clang_getArgType(fn, i), where));
                }
                return "ctypes.CFUNCTYPE(" + string.Join(", ", parts) + ")";
            }
            case TypeKind.FunctionNoProto:
                throw new GeneratorException($"{where}: function pointers need a full, non-variadic prototype.");
            case TypeKind.Void:
                return "ctypes.c_void_p"; // device memory, streams, events, graphs
            case TypeKind.CharS:
            case TypeKind.CharU:
                return "ctypes.c_char_p"; // NUL-terminated strings (a result reads as bytes)
            case TypeKind.Record when Clang.clang_Type_getSizeOf(canonical) < 0:
                return "ctypes.c_void_p"; // an opaque handle such as fa_context_t
            default:
                return $"ctypes.POINTER({MapPython(pointee, where)})";
        }
    }
}
