namespace FlashAttention.Bindings.Generator;

/// <summary>An object-like macro whose body is an integer constant expression.</summary>
internal sealed record MacroConstant(string Name, long Value, string Expression, string? Doc);

/// <summary>One enumerator of a C enum.</summary>
internal sealed record EnumMember(string CName, string CsName, long Value, string? Doc);

/// <summary>A C enum and its C# mirror name.</summary>
internal sealed record EnumModel(string CName, string? TypedefName, string CsName, IReadOnlyList<EnumMember> Members,
    string? Doc);

/// <summary>
/// A field of a C struct. <see cref="FixedLength"/> is set for a C array, which becomes a C# fixed buffer.
/// <see cref="PyType"/> is the field's ctypes type (an array type for a C array).
/// </summary>
internal sealed record FieldModel(string CName, string CsName, string CsType, int? FixedLength, long Offset,
    string CType, string? Doc, string PyType);

/// <summary>A C struct with the layout libclang computed for the target.</summary>
internal sealed record StructModel(string CName, string? TypedefName, string CsName, long Size, long Alignment,
    IReadOnlyList<FieldModel> Fields, string? Doc);

/// <summary>A parameter of an exported function; <see cref="PyType"/> is its ctypes type.</summary>
internal sealed record ParameterModel(string CName, string CsName, string CsType, string CType, string PyType);

/// <summary>An exported C function; <see cref="PyReturnType"/> is the ctypes restype ("None" for void).</summary>
internal sealed record FunctionModel(string Name, string CsReturnType, string CReturnType,
    IReadOnlyList<ParameterModel> Parameters, string? Doc, IReadOnlyList<string> TypeNotes, string PyReturnType);

/// <summary>
/// A typedef of a function pointer (fa_log_callback_t) with its ctypes.CFUNCTYPE expression; the Python
/// module names it so callers can wrap a Python function.
/// </summary>
internal sealed record CallbackTypeModel(string Name, string PyType, string? Doc);

/// <summary>Everything the emitters need from the header, in header order.</summary>
internal sealed record HeaderModel(IReadOnlyList<MacroConstant> Macros, IReadOnlyList<EnumModel> Enums,
    IReadOnlyList<StructModel> Structs, IReadOnlyList<FunctionModel> Functions,
    IReadOnlyList<CallbackTypeModel> CallbackTypes);
