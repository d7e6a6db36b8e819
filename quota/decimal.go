package quota

import (
	"bytes"
	"encoding/json"
	"math/big"
	"strconv"
	"strings"
)

// Limits on what ParseDecimal accepts. They keep a hostile input such as
// "1e999999999" from allocating huge numbers, and they are wide enough that
// String of any accepted value parses again.
const (
	decimalMaxLen        = 1024 // bytes of input
	decimalMaxIntDigits  = 100  // digits before the point, written out in full
	decimalMaxFracDigits = 100  // digits after the point, written out in full
	decimalMaxExpDigits  = 9    // significant digits of an exponent
	decimalRoundDigits   = 12   // fractional digits String keeps for a non-terminating value
)

// decimalZeroRat is the value of the zero Decimal. It is only ever read.
var decimalZeroRat = new(big.Rat)

// Decimal is an exact decimal number for money, built on math/big.Rat.
//
// Decimal has value semantics: every operation returns a new Decimal and none
// modifies its operands, so values may be copied and shared freely, also
// across goroutines. The zero value is 0. Compare with Cmp, not ==.
type Decimal struct {
	r *big.Rat // nil means 0; never modified once the Decimal is built
}

// ParseDecimal parses s in plain decimal notation with an optional sign and
// an optional exponent, for example "3", "-0.30" or "1.5e-6". It rejects the
// empty string, NaN, infinities, fractions, hexadecimal, digit separators and
// surrounding space, and values that written out would need more than 100
// digits before or after the decimal point. Errors are ErrInvalid.
func ParseDecimal(s string) (Decimal, error) {
	if s == "" {
		return Decimal{}, Invalid("decimal", "empty number")
	}
	if len(s) > decimalMaxLen {
		return Decimal{}, Invalid("decimal", "number is longer than %d bytes", decimalMaxLen)
	}
	bad := func() (Decimal, error) {
		return Decimal{}, Invalid("decimal", "%q is not a decimal number", s)
	}
	i := 0
	neg := false
	if s[0] == '+' || s[0] == '-' {
		neg = s[0] == '-'
		i++
	}
	start := i
	for i < len(s) && isDecimalDigit(s[i]) {
		i++
	}
	intPart := s[start:i]
	if intPart == "" {
		return bad()
	}
	fracPart := ""
	if i < len(s) && s[i] == '.' {
		i++
		start = i
		for i < len(s) && isDecimalDigit(s[i]) {
			i++
		}
		fracPart = s[start:i]
		if fracPart == "" {
			return bad()
		}
	}
	exp := 0
	if i < len(s) && (s[i] == 'e' || s[i] == 'E') {
		i++
		expNeg := false
		if i < len(s) && (s[i] == '+' || s[i] == '-') {
			expNeg = s[i] == '-'
			i++
		}
		start = i
		for i < len(s) && isDecimalDigit(s[i]) {
			i++
		}
		if start == i {
			return bad()
		}
		digits := strings.TrimLeft(s[start:i], "0")
		if len(digits) > decimalMaxExpDigits {
			return Decimal{}, Invalid("decimal", "exponent of %q is out of range", s)
		}
		if digits != "" {
			e, err := strconv.Atoi(digits)
			if err != nil {
				return bad()
			}
			exp = e
		}
		if expNeg {
			exp = -exp
		}
	}
	if i != len(s) {
		return bad()
	}

	// The value is 0.digits × 10^point once digits has neither leading
	// nor trailing zeros.
	digits := intPart + fracPart
	point := len(intPart) + exp
	for len(digits) > 0 && digits[0] == '0' {
		digits = digits[1:]
		point--
	}
	digits = strings.TrimRight(digits, "0")
	if digits == "" {
		return Decimal{}, nil
	}
	if point > decimalMaxIntDigits {
		return Decimal{}, Invalid("decimal", "%q is too large", s)
	}
	if len(digits)-point > decimalMaxFracDigits {
		return Decimal{}, Invalid("decimal", "%q has more than %d fractional digits", s, decimalMaxFracDigits)
	}
	n, ok := new(big.Int).SetString(digits, 10)
	if !ok {
		return bad()
	}
	r := new(big.Rat)
	if point >= len(digits) {
		r.SetInt(n.Mul(n, decimalPow10(point-len(digits))))
	} else {
		r.SetFrac(n, decimalPow10(len(digits)-point))
	}
	if neg {
		r.Neg(r)
	}
	return Decimal{r: r}, nil
}

// MustDecimal is like ParseDecimal but panics if s does not parse. It is for
// constants in code and tests.
func MustDecimal(s string) Decimal {
	d, err := ParseDecimal(s)
	if err != nil {
		panic("quota.MustDecimal(" + strconv.Quote(s) + "): " + err.Error())
	}
	return d
}

func isDecimalDigit(c byte) bool { return '0' <= c && c <= '9' }

func decimalPow10(n int) *big.Int {
	return new(big.Int).Exp(big.NewInt(10), big.NewInt(int64(n)), nil)
}

// rat returns d's value for reading. The result must not be modified.
func (d Decimal) rat() *big.Rat {
	if d.r == nil {
		return decimalZeroRat
	}
	return d.r
}

// Add returns d + e.
func (d Decimal) Add(e Decimal) Decimal {
	if d.r == nil {
		return e
	}
	if e.r == nil {
		return d
	}
	return Decimal{r: new(big.Rat).Add(d.r, e.r)}
}

// Mul returns d × e.
func (d Decimal) Mul(e Decimal) Decimal {
	if d.r == nil || e.r == nil {
		return Decimal{}
	}
	return Decimal{r: new(big.Rat).Mul(d.r, e.r)}
}

// Cmp compares d and e and returns -1 if d < e, 0 if d == e and +1 if d > e.
func (d Decimal) Cmp(e Decimal) int { return d.rat().Cmp(e.rat()) }

// Sign returns -1 if d < 0, 0 if d == 0 and +1 if d > 0.
func (d Decimal) Sign() int { return d.rat().Sign() }

// IsZero reports whether d == 0.
func (d Decimal) IsZero() bool { return d.Sign() == 0 }

// Ceil returns the least integer that is >= d. ok is false if that integer
// does not fit in an int64.
func (d Decimal) Ceil() (n int64, ok bool) {
	r := d.rat()
	if r.IsInt() {
		if !r.Num().IsInt64() {
			return 0, false
		}
		return r.Num().Int64(), true
	}
	// QuoRem truncates toward zero, which is the ceiling for negative
	// values; a positive value with a remainder rounds up by one.
	q, m := new(big.Int).QuoRem(r.Num(), r.Denom(), new(big.Int))
	if m.Sign() > 0 {
		q.Add(q, big.NewInt(1))
	}
	if !q.IsInt64() {
		return 0, false
	}
	return q.Int64(), true
}

// String returns the shortest exact decimal representation of d without an
// exponent, such as "3", "-0.3" or "0.000015". A value with no finite decimal
// representation (only possible through arithmetic, never from parsing) is
// rounded half away from zero to 12 fractional digits.
func (d Decimal) String() string {
	r := d.rat()
	if r.Sign() == 0 {
		return "0"
	}
	if r.IsInt() {
		return r.Num().String()
	}
	n, exact := r.FloatPrec()
	if exact {
		return r.FloatString(n)
	}
	s := r.FloatString(decimalRoundDigits)
	s = strings.TrimRight(s, "0")
	s = strings.TrimSuffix(s, ".")
	if s == "-0" {
		s = "0"
	}
	return s
}

// MarshalJSON encodes d as a JSON number (not a string), as String writes it.
func (d Decimal) MarshalJSON() ([]byte, error) {
	return []byte(d.String()), nil
}

// UnmarshalJSON decodes a JSON number, or a JSON string that holds a number,
// exactly as ParseDecimal does (never through float64). JSON null leaves d
// unchanged. Errors are ErrInvalid.
func (d *Decimal) UnmarshalJSON(data []byte) error {
	data = bytes.TrimSpace(data)
	if string(data) == "null" {
		return nil
	}
	s := string(data)
	if len(data) > 0 && data[0] == '"' {
		if err := json.Unmarshal(data, &s); err != nil {
			return Invalid("decimal", "malformed JSON string")
		}
	}
	v, err := ParseDecimal(s)
	if err != nil {
		return err
	}
	*d = v
	return nil
}
