package quota_test

import (
	"encoding/json"
	"errors"
	"math"
	"strconv"
	"strings"
	"testing"

	"github.com/quotad/quotad/quota"
)

func TestParseDecimal(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    string // String() of the result
		wantErr bool
	}{
		{name: "integer", in: "3", want: "3"},
		{name: "zero", in: "0", want: "0"},
		{name: "negative zero", in: "-0.000", want: "0"},
		{name: "trailing zeros", in: "0.30", want: "0.3"},
		{name: "leading zeros", in: "007.50", want: "7.5"},
		{name: "plus sign", in: "+1.25", want: "1.25"},
		{name: "negative", in: "-2.5", want: "-2.5"},
		{name: "small", in: "0.000015", want: "0.000015"},
		{name: "exponent negative", in: "1e-3", want: "0.001"},
		{name: "exponent positive", in: "1.5E+6", want: "1500000"},
		{name: "exponent zero", in: "42e0", want: "42"},
		{name: "exponent leading zeros", in: "1e-0000003", want: "0.001"},
		{name: "exponent shifts fraction", in: "123.456e1", want: "1234.56"},
		{name: "zero with huge exponent", in: "0e999999999", want: "0"},
		{name: "100 integer digits", in: "1e99", want: "1" + strings.Repeat("0", 99)},
		{name: "100 fraction digits", in: "1e-100", want: "0." + strings.Repeat("0", 99) + "1"},
		{name: "long zero padding ok", in: "0." + strings.Repeat("0", 500) + "1e500", want: "0.1"},

		{name: "empty", in: "", wantErr: true},
		{name: "sign only", in: "-", wantErr: true},
		{name: "NaN", in: "NaN", wantErr: true},
		{name: "Inf", in: "Inf", wantErr: true},
		{name: "negative infinity", in: "-Infinity", wantErr: true},
		{name: "leading dot", in: ".5", wantErr: true},
		{name: "trailing dot", in: "5.", wantErr: true},
		{name: "two dots", in: "1.2.3", wantErr: true},
		{name: "fraction", in: "1/3", wantErr: true},
		{name: "hex", in: "0x10", wantErr: true},
		{name: "hex float", in: "0x1p-2", wantErr: true},
		{name: "underscore", in: "1_000", wantErr: true},
		{name: "comma", in: "1,5", wantErr: true},
		{name: "space", in: " 1", wantErr: true},
		{name: "trailing space", in: "1 ", wantErr: true},
		{name: "exponent without digits", in: "1e", wantErr: true},
		{name: "exponent sign only", in: "1e+", wantErr: true},
		{name: "double sign", in: "--1", wantErr: true},
		{name: "101 integer digits", in: "1e100", wantErr: true},
		{name: "101 fraction digits", in: "1e-101", wantErr: true},
		{name: "huge exponent", in: "1e999999999", wantErr: true},
		{name: "exponent overflow", in: "1e99999999999999999999", wantErr: true},
		{name: "too long", in: strings.Repeat("1", 2000), wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, err := quota.ParseDecimal(tt.in)
			if tt.wantErr {
				if !errors.Is(err, quota.ErrInvalid) {
					t.Fatalf("ParseDecimal(%q) = %v, %v; want ErrInvalid", tt.in, d, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseDecimal(%q): %v", tt.in, err)
			}
			if got := d.String(); got != tt.want {
				t.Fatalf("ParseDecimal(%q).String() = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}

func TestDecimalArithmetic(t *testing.T) {
	var zero quota.Decimal
	tests := []struct {
		name string
		got  quota.Decimal
		want string
	}{
		{name: "add", got: quota.MustDecimal("0.1").Add(quota.MustDecimal("0.2")), want: "0.3"},
		{name: "add zero value", got: zero.Add(quota.MustDecimal("1.5")), want: "1.5"},
		{name: "add to zero value", got: quota.MustDecimal("1.5").Add(zero), want: "1.5"},
		{name: "add negative", got: quota.MustDecimal("1").Add(quota.MustDecimal("-1.25")), want: "-0.25"},
		{name: "mul", got: quota.MustDecimal("0.15").Mul(quota.MustDecimal("1.2")), want: "0.18"},
		{name: "mul tiny", got: quota.MustDecimal("0.000001").Mul(quota.MustDecimal("0.000015")), want: "0.000000000015"},
		{name: "mul zero value", got: zero.Mul(quota.MustDecimal("3")), want: "0"},
		{name: "mul negative", got: quota.MustDecimal("-2").Mul(quota.MustDecimal("0.5")), want: "-1"},
		{name: "zero value", got: zero, want: "0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if s := tt.got.String(); s != tt.want {
				t.Fatalf("got %s, want %s", s, tt.want)
			}
		})
	}
}

func TestDecimalValueSemantics(t *testing.T) {
	a := quota.MustDecimal("1.5")
	b := quota.MustDecimal("2")
	_ = a.Add(b)
	_ = a.Mul(b)
	if a.String() != "1.5" || b.String() != "2" {
		t.Fatalf("operands changed: a = %s, b = %s", a, b)
	}
	c := a
	var d quota.Decimal
	if err := json.Unmarshal([]byte(`7`), &c); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal([]byte(`"8"`), &d); err != nil {
		t.Fatal(err)
	}
	if a.String() != "1.5" || c.String() != "7" || d.String() != "8" {
		t.Fatalf("unmarshal into a copy changed the original: a = %s, c = %s, d = %s", a, c, d)
	}
}

func TestDecimalCmpSign(t *testing.T) {
	var zero quota.Decimal
	tests := []struct {
		name     string
		a, b     quota.Decimal
		cmp      int
		signA    int
		zeroA    bool
		positive bool
	}{
		{name: "less", a: quota.MustDecimal("0.29"), b: quota.MustDecimal("0.3"), cmp: -1, signA: 1},
		{name: "equal different notation", a: quota.MustDecimal("0.30"), b: quota.MustDecimal("3e-1"), cmp: 0, signA: 1},
		{name: "greater", a: quota.MustDecimal("10"), b: quota.MustDecimal("9.999999"), cmp: 1, signA: 1},
		{name: "negative", a: quota.MustDecimal("-1"), b: zero, cmp: -1, signA: -1},
		{name: "zero value equals parsed zero", a: zero, b: quota.MustDecimal("0.0"), cmp: 0, signA: 0, zeroA: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.a.Cmp(tt.b); got != tt.cmp {
				t.Errorf("%s.Cmp(%s) = %d, want %d", tt.a, tt.b, got, tt.cmp)
			}
			if got := tt.b.Cmp(tt.a); got != -tt.cmp {
				t.Errorf("%s.Cmp(%s) = %d, want %d", tt.b, tt.a, got, -tt.cmp)
			}
			if got := tt.a.Sign(); got != tt.signA {
				t.Errorf("%s.Sign() = %d, want %d", tt.a, got, tt.signA)
			}
			if got := tt.a.IsZero(); got != tt.zeroA {
				t.Errorf("%s.IsZero() = %v, want %v", tt.a, got, tt.zeroA)
			}
		})
	}
}

// TestDecimalStringLong checks that String never rounds a terminating value,
// however many digits it has. (Add and Mul of decimals always terminate, so
// String's 12-digit rounding is not reachable through the exported API.)
func TestDecimalStringLong(t *testing.T) {
	tests := []struct {
		name string
		in   quota.Decimal
		want string
	}{
		{name: "many digits exact", in: quota.MustDecimal("0.1234567890123456789"), want: "0.1234567890123456789"},
		{name: "product keeps all digits", in: quota.MustDecimal("0.123456789").Mul(quota.MustDecimal("0.987654321")), want: "0.121932631112635269"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.in.String(); got != tt.want {
				t.Fatalf("String() = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestDecimalCeil(t *testing.T) {
	tests := []struct {
		name   string
		in     string
		want   int64
		wantOK bool
	}{
		{name: "zero", in: "0", want: 0, wantOK: true},
		{name: "integer", in: "360", want: 360, wantOK: true},
		{name: "small positive", in: "0.000018", want: 1, wantOK: true},
		{name: "just above integer", in: "2.0000000001", want: 3, wantOK: true},
		{name: "negative fraction", in: "-1.5", want: -1, wantOK: true},
		{name: "negative small", in: "-0.1", want: 0, wantOK: true},
		{name: "max int64", in: strconv.FormatInt(math.MaxInt64, 10), want: math.MaxInt64, wantOK: true},
		{name: "just below max int64", in: strconv.FormatInt(math.MaxInt64-1, 10) + ".5", want: math.MaxInt64, wantOK: true},
		{name: "above max int64", in: strconv.FormatInt(math.MaxInt64, 10) + ".000001", wantOK: false},
		{name: "max int64 plus one", in: "9223372036854775808", wantOK: false},
		{name: "min int64", in: strconv.FormatInt(math.MinInt64, 10), want: math.MinInt64, wantOK: true},
		{name: "min int64 fraction", in: strconv.FormatInt(math.MinInt64, 10) + ".5", want: math.MinInt64, wantOK: true},
		{name: "below min int64", in: "-9223372036854775809", wantOK: false},
		{name: "huge", in: "1e50", wantOK: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := quota.MustDecimal(tt.in).Ceil()
			if ok != tt.wantOK || (ok && got != tt.want) {
				t.Fatalf("Ceil(%s) = %d, %v; want %d, %v", tt.in, got, ok, tt.want, tt.wantOK)
			}
		})
	}
}

func TestDecimalJSON(t *testing.T) {
	tests := []struct {
		name     string
		in       string
		want     string // String() after decoding
		wantJSON string // re-encoded
		wantErr  bool
	}{
		{name: "number", in: `0.30`, want: "0.3", wantJSON: `0.3`},
		{name: "integer", in: `15`, want: "15", wantJSON: `15`},
		{name: "exponent", in: `1.5e-6`, want: "0.0000015", wantJSON: `0.0000015`},
		{name: "string", in: `"3.75"`, want: "3.75", wantJSON: `3.75`},
		{name: "string with escape", in: `"\u0031.5"`, want: "1.5", wantJSON: `1.5`},
		{name: "negative", in: `-2.5`, want: "-2.5", wantJSON: `-2.5`},
		{name: "beyond float64 precision", in: `0.10000000000000000000000001`, want: "0.10000000000000000000000001", wantJSON: `0.10000000000000000000000001`},
		{name: "big integer exact", in: `"123456789012345678901234567890"`, want: "123456789012345678901234567890", wantJSON: `123456789012345678901234567890`},
		{name: "empty string", in: `""`, wantErr: true},
		{name: "NaN string", in: `"NaN"`, wantErr: true},
		{name: "bool", in: `true`, wantErr: true},
		{name: "object", in: `{}`, wantErr: true},
		{name: "string with spaces", in: `" 1"`, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var d quota.Decimal
			err := json.Unmarshal([]byte(tt.in), &d)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("Unmarshal(%s) = %s, want error", tt.in, d)
				}
				if !errors.Is(err, quota.ErrInvalid) {
					t.Fatalf("Unmarshal(%s) error = %v, want ErrInvalid", tt.in, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Unmarshal(%s): %v", tt.in, err)
			}
			if d.String() != tt.want {
				t.Fatalf("Unmarshal(%s) = %s, want %s", tt.in, d, tt.want)
			}
			out, err := json.Marshal(d)
			if err != nil {
				t.Fatal(err)
			}
			if string(out) != tt.wantJSON {
				t.Fatalf("Marshal = %s, want %s", out, tt.wantJSON)
			}
		})
	}
}

func TestDecimalJSONNull(t *testing.T) {
	d := quota.MustDecimal("4.5")
	if err := json.Unmarshal([]byte(`null`), &d); err != nil {
		t.Fatal(err)
	}
	if d.String() != "4.5" {
		t.Fatalf("null changed the value to %s", d)
	}
	var zero quota.Decimal
	out, err := json.Marshal(struct {
		V quota.Decimal `json:"v"`
	}{zero})
	if err != nil || string(out) != `{"v":0}` {
		t.Fatalf("Marshal(zero) = %s, %v", out, err)
	}
}

func TestMustDecimalPanics(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Fatal("MustDecimal(\"abc\") did not panic")
		}
	}()
	quota.MustDecimal("abc")
}

func FuzzParseDecimal(f *testing.F) {
	for _, s := range []string{
		"0", "3", "0.30", "-1.5", "+2", "1e-3", "1.5E+6", "0.000015", "007", "1e99", "1e-100",
		"", "-", ".5", "5.", "NaN", "Inf", "1/3", "0x10", "1_0", "1e", "1e999999999", "1e100",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		d, err := quota.ParseDecimal(s)
		if err != nil {
			if !errors.Is(err, quota.ErrInvalid) {
				t.Fatalf("ParseDecimal(%q) error %v is not ErrInvalid", s, err)
			}
			return
		}
		str := d.String()
		d2, err := quota.ParseDecimal(str)
		if err != nil {
			t.Fatalf("ParseDecimal(%q) = %s, which does not parse: %v", s, str, err)
		}
		if d2.Cmp(d) != 0 {
			t.Fatalf("ParseDecimal(%q) = %s, which parses as %s", s, str, d2)
		}
		if d2.String() != str {
			t.Fatalf("String not canonical: %q then %q", str, d2.String())
		}
		js, err := json.Marshal(d)
		if err != nil {
			t.Fatalf("Marshal(%s): %v", str, err)
		}
		if !json.Valid(js) {
			t.Fatalf("Marshal(%s) = %s is not valid JSON", str, js)
		}
		var d3 quota.Decimal
		if err := json.Unmarshal(js, &d3); err != nil || d3.Cmp(d) != 0 {
			t.Fatalf("JSON round trip of %s: %s, %v", str, d3, err)
		}
		if c, ok := d.Ceil(); ok {
			// ceil - 1 < d <= ceil
			if quota.MustDecimal(strconv.FormatInt(c, 10)).Cmp(d) < 0 {
				t.Fatalf("Ceil(%s) = %d is below the value", str, c)
			}
		}
	})
}
