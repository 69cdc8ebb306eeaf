using System.Runtime.CompilerServices;
using FlashAttn.Native;

namespace FlashAttn.Internal;

/// <summary>
/// The one mapping from <see cref="AttentionOptions"/> to the option fields of <c>fa_forward_params_t</c>,
/// <c>fa_backward_params_t</c> and <c>fa_decode_params_t</c>: every pass fills its fields here and nowhere else.
/// </summary>
/// <remarks>
/// <para>
/// The three structs are generated in another assembly, so they cannot share an interface. Instead each overload of
/// <see cref="Write(AttentionOptions, ref FaForwardParams)"/> only says which of its struct's fields is which option
/// (<see cref="Fields"/>, a set of references into the struct), and the private <c>Write</c> converts each option once,
/// in the C ABI's spelling: 0 scale and softcap mean default and off, -1 an unbounded window side, 0/1 for flags.
/// </para>
/// <para>
/// A pass without a field for an option passes <see cref="Absent{T}"/> for it and the option is not written:
/// the forward pass and decode have no <c>deterministic</c> (they have no atomics), and decode has no
/// <c>causal_alignment</c> (its diagonal is always bottom-right; the managed decode check refuses
/// <see cref="CausalAlignment.TopLeft"/> before any native call).
/// </para>
/// </remarks>
internal static class NativeOptions
{
    /// <summary>Writes the option fields of a forward call.</summary>
    public static void Write(AttentionOptions options, ref FaForwardParams p) =>
        Write(options, new Fields(
            ref p.softmax_scale, ref p.causal, ref p.causal_alignment, ref p.kernel_path,
            ref p.window_left, ref p.window_right, ref p.softcap, deterministic: ref Absent<int>()));

    /// <summary>Writes the option fields of a backward call.</summary>
    public static void Write(AttentionOptions options, ref FaBackwardParams p) =>
        Write(options, new Fields(
            ref p.softmax_scale, ref p.causal, ref p.causal_alignment, ref p.kernel_path,
            ref p.window_left, ref p.window_right, ref p.softcap, ref p.deterministic));

    /// <summary>Writes the option fields of a decode call.</summary>
    public static void Write(AttentionOptions options, ref FaDecodeParams p) =>
        Write(options, new Fields(
            ref p.softmax_scale, ref p.causal, causalAlignment: ref Absent<int>(), ref p.kernel_path,
            ref p.window_left, ref p.window_right, ref p.softcap, deterministic: ref Absent<int>()));

    /// <summary>Stands for an option field the pass's struct does not have.</summary>
    private static ref T Absent<T>() => ref Unsafe.NullRef<T>();

    private static void Write(AttentionOptions o, Fields f)
    {
        Set(ref f.SoftmaxScale, o.SoftmaxScale ?? 0f);
        Set(ref f.Causal, o.Causal ? 1 : 0);
        Set(ref f.CausalAlignment, (int)o.CausalAlignment);
        Set(ref f.KernelPath, (int)o.KernelPath);
        Set(ref f.WindowLeft, o.WindowLeft ?? -1);
        Set(ref f.WindowRight, o.WindowRight ?? -1);
        Set(ref f.Softcap, o.Softcap ?? 0f);
        Set(ref f.Deterministic, o.Deterministic ? 1 : 0);
    }

    private static void Set<T>(ref T field, T value)
    {
        if (!Unsafe.IsNullRef(ref field))
        {
            field = value;
        }
    }

    /// <summary>References to one params struct's option fields, in the order of <see cref="AttentionOptions"/>.</summary>
    private readonly ref struct Fields
    {
        public readonly ref float SoftmaxScale;
        public readonly ref int Causal;
        public readonly ref int CausalAlignment;
        public readonly ref int KernelPath;
        public readonly ref int WindowLeft;
        public readonly ref int WindowRight;
        public readonly ref float Softcap;
        public readonly ref int Deterministic;

        public Fields(
            ref float softmaxScale, ref int causal, ref int causalAlignment, ref int kernelPath,
            ref int windowLeft, ref int windowRight, ref float softcap, ref int deterministic)
        {
            SoftmaxScale = ref softmaxScale;
            Causal = ref causal;
            CausalAlignment = ref causalAlignment;
            KernelPath = ref kernelPath;
            WindowLeft = ref windowLeft;
            WindowRight = ref windowRight;
            Softcap = ref softcap;
            Deterministic = ref deterministic;
        }
    }
}
