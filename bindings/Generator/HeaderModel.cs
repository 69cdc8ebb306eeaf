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
/// </summary>
internal sealed record FieldModel(string CName, string CsName, string CsType, int? FixedLength, long Offset,
    string CType, string? Doc);

/// <summary>A C struct with the layout libclang computed for the target.</summary>
internal sealed record StructModel(string CName, string? TypedefName, string CsName, long Size, long Alignment,
    IReadOnlyList<FieldModel> Fields, string? Doc);

/// <summary>A parameter of an exported function.</summary>
internal sealed record ParameterModel(string CName, string CsName, string CsType, string CType);

/// <summary>An exported C function.</summary>
internal sealed record FunctionModel(string Name, string CsReturnType, string CReturnType,
    IReadOnlyList<ParameterModel> Parameters, string? Doc, IReadOnlyList<string> TypeNotes);

/// <summary>Everything the emitters need from the header, in header order.</summary>
internal sealed record HeaderModel(IReadOnlyList<MacroConstant> Macros, IReadOnlyList<EnumModel> Enums,
    IReadOnlyList<StructModel> Structs, IReadOnlyList<FunctionModel> Functions);
