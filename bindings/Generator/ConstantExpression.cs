using System.Globalization;

namespace FlashAttention.Bindings.Generator;

/// <summary>
/// Evaluates the body of an object-like macro as a C integer constant expression: integer literals (with
/// u/l suffixes), names of macros already evaluated, parentheses, unary + - ~ and the binary operators
/// * / % + - &lt;&lt; &gt;&gt; &amp; ^ |. Anything else throws <see cref="FormatException"/>, and the macro
/// is left out of the bindings.
/// </summary>
internal sealed class ConstantExpression(IReadOnlyList<string> tokens, IReadOnlyDictionary<string, long> known)
{
    private int _pos;

    public long Evaluate()
    {
        long value = Or();
        if (_pos != tokens.Count)
        {
            throw new FormatException($"unexpected '{tokens[_pos]}'");
        }
        return value;
    }

    private string? Peek => _pos < tokens.Count ? tokens[_pos] : null;

    private bool Accept(string op)
    {
        if (Peek == op)
        {
            _pos++;
            return true;
        }
        return false;
    }

    private long Or()
    {
        long v = Xor();
        while (Accept("|"))
        {
            v |= Xor();
        }
        return v;
    }

    private long Xor()
    {
        long v = And();
        while (Accept("^"))
        {
            v ^= And();
        }
        return v;
    }

    private long And()
    {
        long v = Shift();
        while (Accept("&"))
        {
            v &= Shift();
        }
        return v;
    }

    private long Shift()
    {
        long v = Additive();
        while (true)
        {
            if (Accept("<<"))
            {
                v <<= (int)Additive();
            }
            else if (Accept(">>"))
            {
                v >>= (int)Additive();
            }
            else
            {
                return v;
            }
        }
    }

    private long Additive()
    {
        long v = Multiplicative();
        while (true)
        {
            if (Accept("+"))
            {
                v = checked(v + Multiplicative());
            }
            else if (Accept("-"))
            {
                v = checked(v - Multiplicative());
            }
            else
            {
                return v;
            }
        }
    }

    private long Multiplicative()
    {
        long v = Unary();
        while (true)
        {
            if (Accept("*"))
            {
                v = checked(v * Unary());
            }
            else if (Accept("/"))
            {
                long d = Unary();
                v = d == 0 ? throw new FormatException("division by zero") : v / d;
            }
            else if (Accept("%"))
            {
                long d = Unary();
                v = d == 0 ? throw new FormatException("division by zero") : v % d;
            }
            else
            {
                return v;
            }
        }
    }

    private long Unary()
    {
        if (Accept("-"))
        {
            return checked(-Unary());
        }
        if (Accept("+"))
        {
            return Unary();
        }
        if (Accept("~"))
        {
            return ~Unary();
        }
        return Primary();
    }

    private long Primary()
    {
        string token = Peek ?? throw new FormatException("expression ends early");
        _pos++;
        if (token == "(")
        {
            long v = Or();
            if (!Accept(")"))
            {
                throw new FormatException("missing ')'");
            }
            return v;
        }
        if (known.TryGetValue(token, out long value))
        {
            return value;
        }
        if (token.Length > 0 && char.IsAsciiDigit(token[0]))
        {
            return Literal(token);
        }
        throw new FormatException($"'{token}' is not an integer constant");
    }

    private static long Literal(string token)
    {
        string digits = token.TrimEnd('u', 'U', 'l', 'L');
        try
        {
            if (digits.StartsWith("0x", StringComparison.OrdinalIgnoreCase))
            {
                return (long)ulong.Parse(digits.AsSpan(2), NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture);
            }
            if (digits.Length > 1 && digits[0] == '0')
            {
                return Convert.ToInt64(digits, 8);
            }
            return long.Parse(digits, NumberStyles.None, CultureInfo.InvariantCulture);
        }
        catch (Exception e) when (e is FormatException or OverflowException or ArgumentException)
        {
            throw new FormatException($"'{token}' is not an integer literal");
        }
    }
}
