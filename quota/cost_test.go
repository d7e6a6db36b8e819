package quota_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/quotad/quotad/quota"
)

func defaultBook() *quota.CostBook {
	return quota.NewCostBook(quota.DefaultMargin(), quota.DefaultPrices())
}

func TestCostBookCost(t *testing.T) {
	const million = 1_000_000
	tests := []struct {
		name        string
		margin      string
		usage       quota.Usage
		wantCredits int64
		wantUSD     string
	}{
		{name: "sonnet 1M input margin 0.2", margin: "0.2",
			usage:       quota.Usage{Model: "claude-3-5-sonnet", InputTokens: million},
			wantCredits: 360, wantUSD: "3"},
		{name: "sonnet 1M input margin 0 is exact", margin: "0",
			usage:       quota.Usage{Model: "claude-3-5-sonnet", InputTokens: million},
			wantCredits: 300, wantUSD: "3"},
		{name: "sonnet 1M output", margin: "0.2",
			usage:       quota.Usage{Model: "claude-3-5-sonnet", OutputTokens: million},
			wantCredits: 1800, wantUSD: "15"},
		{name: "one token rounds up", margin: "0.2",
			usage:       quota.Usage{Model: "gpt-4o-mini", InputTokens: 1},
			wantCredits: 1, wantUSD: "0.00000015"},
		{name: "one token margin 0 rounds up", margin: "0",
			usage:       quota.Usage{Model: "gpt-4o-mini", InputTokens: 1},
			wantCredits: 1, wantUSD: "0.00000015"},
		{name: "zero usage is free", margin: "0.2",
			usage:       quota.Usage{Model: "gpt-4o"},
			wantCredits: 0, wantUSD: "0"},
		{name: "cache write priced", margin: "0",
			usage:       quota.Usage{Model: "claude-3-5-sonnet", CacheWriteTokens: million},
			wantCredits: 375, wantUSD: "3.75"},
		{name: "cache read priced", margin: "0",
			usage:       quota.Usage{Model: "claude-3-5-sonnet", CacheReadTokens: million},
			wantCredits: 30, wantUSD: "0.3"},
		{name: "all kinds summed", margin: "0.2",
			// 1000×0.25 + 2000×1.25 + 3000×0.30 + 4000×0.03 = 250 + 2500 + 900 + 120 = 3770 → 0.00377 USD
			// credits = ceil(0.377 × 1.2) = ceil(0.4524) = 1
			usage:       quota.Usage{Model: "claude-3-haiku", InputTokens: 1000, OutputTokens: 2000, CacheWriteTokens: 3000, CacheReadTokens: 4000},
			wantCredits: 1, wantUSD: "0.00377"},
		{name: "cache tokens free for gpt-4o", margin: "0",
			usage:       quota.Usage{Model: "gpt-4o", InputTokens: million, CacheWriteTokens: million, CacheReadTokens: million},
			wantCredits: 250, wantUSD: "2.5"},
		{name: "fraction just above integer rounds up", margin: "0.2",
			// 100,001,000 × 0.15 / 1e6 = 15.00015 USD; × 100 × 1.2 = 1800.018 credits
			usage:       quota.Usage{Model: "gpt-4o-mini", InputTokens: 100_001_000},
			wantCredits: 1801, wantUSD: "15.00015"},
		{name: "max tokens", margin: "0.2",
			usage:       quota.Usage{Model: "claude-3-5-sonnet", InputTokens: 1e12, OutputTokens: 1e12, CacheWriteTokens: 1e12, CacheReadTokens: 1e12},
			wantCredits: 2646000000, wantUSD: "22050000"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			book := quota.NewCostBook(quota.MustDecimal(tt.margin), quota.DefaultPrices())
			credits, usd, err := book.Cost(tt.usage)
			if err != nil {
				t.Fatalf("Cost(%+v): %v", tt.usage, err)
			}
			if credits != tt.wantCredits || usd.String() != tt.wantUSD {
				t.Fatalf("Cost(%+v) = %d credits, %s USD; want %d, %s", tt.usage, credits, usd, tt.wantCredits, tt.wantUSD)
			}
		})
	}
}

func TestCostBookCostErrors(t *testing.T) {
	tests := []struct {
		name      string
		book      *quota.CostBook
		usage     quota.Usage
		wantField string
	}{
		{name: "unknown model", usage: quota.Usage{Model: "gpt-5", InputTokens: 1}, wantField: "usage.model"},
		{name: "empty model", usage: quota.Usage{InputTokens: 1}, wantField: "usage.model"},
		{name: "long unknown model", usage: quota.Usage{Model: strings.Repeat("m", 10000)}, wantField: "usage.model"},
		{name: "negative input", usage: quota.Usage{Model: "gpt-4o", InputTokens: -1}, wantField: "usage.input_tokens"},
		{name: "negative output", usage: quota.Usage{Model: "gpt-4o", OutputTokens: -5}, wantField: "usage.output_tokens"},
		{name: "negative cache write", usage: quota.Usage{Model: "gpt-4o", CacheWriteTokens: math.MinInt64}, wantField: "usage.cache_write_tokens"},
		{name: "negative cache read", usage: quota.Usage{Model: "gpt-4o", CacheReadTokens: -1}, wantField: "usage.cache_read_tokens"},
		{name: "too many input tokens", usage: quota.Usage{Model: "gpt-4o", InputTokens: 1e12 + 1}, wantField: "usage.input_tokens"},
		{name: "too many output tokens", usage: quota.Usage{Model: "gpt-4o", OutputTokens: math.MaxInt64}, wantField: "usage.output_tokens"},
		{name: "credits overflow",
			book: quota.NewCostBook(quota.MustDecimal("1000000000"), []quota.Price{
				{Model: "pricey", Input: quota.MustDecimal("1000000")}}),
			usage: quota.Usage{Model: "pricey", InputTokens: 1e12}, wantField: "usage"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			book := tt.book
			if book == nil {
				book = defaultBook()
			}
			credits, usd, err := book.Cost(tt.usage)
			if !errors.Is(err, quota.ErrInvalid) {
				t.Fatalf("Cost(%+v) = %d, %s, %v; want ErrInvalid", tt.usage, credits, usd, err)
			}
			var fe *quota.FieldError
			if !errors.As(err, &fe) || fe.Field != tt.wantField {
				t.Fatalf("Cost error = %v, want field %q", err, tt.wantField)
			}
			if len(err.Error()) > 200 {
				t.Fatalf("error message is %d bytes long", len(err.Error()))
			}
			if credits != 0 || !usd.IsZero() {
				t.Fatalf("Cost returned %d, %s with an error", credits, usd)
			}
		})
	}
}

func TestCostBookUnknownModelMessage(t *testing.T) {
	_, _, err := defaultBook().Cost(quota.Usage{Model: "gpt-5"})
	if err == nil || err.Error() != `usage.model: unknown model "gpt-5"` {
		t.Fatalf("err = %v", err)
	}
}

func TestCostBookAccessors(t *testing.T) {
	book := quota.NewCostBook(quota.MustDecimal("0.1"), []quota.Price{
		{Model: "zeta", Input: quota.MustDecimal("1")},
		{Model: "alpha", Input: quota.MustDecimal("2")},
		{Model: "zeta", Input: quota.MustDecimal("3")}, // later one wins
	})
	if got := book.Margin().String(); got != "0.1" {
		t.Fatalf("Margin() = %s", got)
	}
	prices := book.Prices()
	if len(prices) != 2 || prices[0].Model != "alpha" || prices[1].Model != "zeta" || prices[1].Input.String() != "3" {
		t.Fatalf("Prices() = %+v", prices)
	}
	prices[0].Model = "mutated"
	if book.Prices()[0].Model != "alpha" {
		t.Fatal("Prices() returned the book's own slice")
	}
	if p, ok := book.Price("alpha"); !ok || p.Input.String() != "2" {
		t.Fatalf("Price(alpha) = %+v, %v", p, ok)
	}
	if _, ok := book.Price("beta"); ok {
		t.Fatal("Price(beta) found")
	}

	next := book.With(quota.Price{Model: "beta", Input: quota.MustDecimal("5")})
	next = next.With(quota.Price{Model: "alpha", Input: quota.MustDecimal("7")})
	if _, ok := book.Price("beta"); ok {
		t.Fatal("With changed the original book")
	}
	if p, _ := book.Price("alpha"); p.Input.String() != "2" {
		t.Fatal("With replaced a price in the original book")
	}
	var models []string
	for _, p := range next.Prices() {
		models = append(models, p.Model)
	}
	if !slices.Equal(models, []string{"alpha", "beta", "zeta"}) {
		t.Fatalf("With: models = %v", models)
	}
	if p, _ := next.Price("alpha"); p.Input.String() != "7" {
		t.Fatalf("With did not replace alpha: %s", p.Input)
	}
	if next.Margin().String() != "0.1" {
		t.Fatalf("With lost the margin: %s", next.Margin())
	}
	credits, _, err := next.Cost(quota.Usage{Model: "beta", InputTokens: 1_000_000})
	if err != nil || credits != 550 {
		t.Fatalf("Cost after With = %d, %v; want 550", credits, err)
	}
}

func TestDefaults(t *testing.T) {
	if got := quota.DefaultMargin().String(); got != "0.2" {
		t.Fatalf("DefaultMargin() = %s", got)
	}
	if err := quota.ValidateMargin(quota.DefaultMargin()); err != nil {
		t.Fatal(err)
	}
	want := map[string][4]string{
		"claude-3-5-sonnet": {"3", "15", "3.75", "0.3"},
		"claude-3-haiku":    {"0.25", "1.25", "0.3", "0.03"},
		"gpt-4o":            {"2.5", "10", "0", "0"},
		"gpt-4o-mini":       {"0.15", "0.6", "0", "0"},
	}
	prices := quota.DefaultPrices()
	if len(prices) != len(want) {
		t.Fatalf("DefaultPrices() has %d prices, want %d", len(prices), len(want))
	}
	if !slices.IsSortedFunc(prices, func(a, b quota.Price) int { return strings.Compare(a.Model, b.Model) }) {
		t.Fatal("DefaultPrices() not sorted by model")
	}
	for _, p := range prices {
		t.Run(p.Model, func(t *testing.T) {
			if err := quota.ValidatePrice(p); err != nil {
				t.Fatal(err)
			}
			got := [4]string{p.Input.String(), p.Output.String(), p.CacheWrite.String(), p.CacheRead.String()}
			if got != want[p.Model] {
				t.Fatalf("prices = %v, want %v", got, want[p.Model])
			}
		})
	}
	prices[0].Model = "mutated"
	if quota.DefaultPrices()[0].Model == "mutated" {
		t.Fatal("DefaultPrices() shares its slice")
	}
}

func TestValidatePrice(t *testing.T) {
	ok := quota.Price{Model: "anthropic/claude-3.5:beta_v2-x", Input: quota.MustDecimal("3"), Output: quota.MustDecimal("15")}
	with := func(f func(p *quota.Price)) quota.Price {
		p := ok
		f(&p)
		return p
	}
	tests := []struct {
		name      string
		price     quota.Price
		wantField string // empty means valid
	}{
		{name: "valid", price: ok},
		{name: "all zero prices", price: quota.Price{Model: "free"}},
		{name: "max price", price: with(func(p *quota.Price) { p.CacheRead = quota.MustDecimal("1000000") })},
		{name: "64 char model", price: with(func(p *quota.Price) { p.Model = strings.Repeat("a", 64) })},
		{name: "empty model", price: with(func(p *quota.Price) { p.Model = "" }), wantField: "model"},
		{name: "65 char model", price: with(func(p *quota.Price) { p.Model = strings.Repeat("a", 65) }), wantField: "model"},
		{name: "space in model", price: with(func(p *quota.Price) { p.Model = "gpt 4o" }), wantField: "model"},
		{name: "non-ascii model", price: with(func(p *quota.Price) { p.Model = "modèle" }), wantField: "model"},
		{name: "negative input", price: with(func(p *quota.Price) { p.Input = quota.MustDecimal("-0.01") }), wantField: "input"},
		{name: "negative output", price: with(func(p *quota.Price) { p.Output = quota.MustDecimal("-1") }), wantField: "output"},
		{name: "cache write too high", price: with(func(p *quota.Price) { p.CacheWrite = quota.MustDecimal("1000000.000001") }), wantField: "cache_write"},
		{name: "cache read too high", price: with(func(p *quota.Price) { p.CacheRead = quota.MustDecimal("1e7") }), wantField: "cache_read"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := quota.ValidatePrice(tt.price)
			if tt.wantField == "" {
				if err != nil {
					t.Fatalf("ValidatePrice: %v", err)
				}
				return
			}
			var fe *quota.FieldError
			if !errors.Is(err, quota.ErrInvalid) || !errors.As(err, &fe) || fe.Field != tt.wantField {
				t.Fatalf("ValidatePrice error = %v, want ErrInvalid for %q", err, tt.wantField)
			}
		})
	}
}

func TestValidateMargin(t *testing.T) {
	tests := []struct {
		name    string
		margin  string
		wantErr bool
	}{
		{name: "zero", margin: "0"},
		{name: "default", margin: "0.2"},
		{name: "max", margin: "1000"},
		{name: "negative", margin: "-0.1", wantErr: true},
		{name: "too high", margin: "1000.5", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := quota.ValidateMargin(quota.MustDecimal(tt.margin))
			if (err != nil) != tt.wantErr || (err != nil && !errors.Is(err, quota.ErrInvalid)) {
				t.Fatalf("ValidateMargin(%s) = %v, wantErr %v", tt.margin, err, tt.wantErr)
			}
		})
	}
}

func TestPriceJSONRoundTrip(t *testing.T) {
	tests := []struct {
		name     string
		in       string
		wantJSON string
	}{
		{name: "numbers",
			in:       `{"model":"claude-3-5-sonnet","input":3,"output":15.00,"cache_write":3.75,"cache_read":0.30}`,
			wantJSON: `{"model":"claude-3-5-sonnet","input":3,"output":15,"cache_write":3.75,"cache_read":0.3}`},
		{name: "strings",
			in:       `{"model":"m","input":"0.000015","output":"1e-7","cache_write":"0","cache_read":"0.1000000000000000055511151231257827"}`,
			wantJSON: `{"model":"m","input":0.000015,"output":0.0000001,"cache_write":0,"cache_read":0.1000000000000000055511151231257827}`},
		{name: "missing prices are zero",
			in:       `{"model":"m"}`,
			wantJSON: `{"model":"m","input":0,"output":0,"cache_write":0,"cache_read":0}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var p quota.Price
			if err := json.Unmarshal([]byte(tt.in), &p); err != nil {
				t.Fatalf("Unmarshal: %v", err)
			}
			out, err := json.Marshal(p)
			if err != nil {
				t.Fatalf("Marshal: %v", err)
			}
			if string(out) != tt.wantJSON {
				t.Fatalf("Marshal = %s, want %s", out, tt.wantJSON)
			}
			var again quota.Price
			if err := json.Unmarshal(out, &again); err != nil {
				t.Fatalf("Unmarshal again: %v", err)
			}
			if again.Model != p.Model || again.Input.Cmp(p.Input) != 0 || again.Output.Cmp(p.Output) != 0 ||
				again.CacheWrite.Cmp(p.CacheWrite) != 0 || again.CacheRead.Cmp(p.CacheRead) != 0 {
				t.Fatalf("round trip changed %+v into %+v", p, again)
			}
		})
	}
}

func TestPriceJSONInvalid(t *testing.T) {
	var p quota.Price
	err := json.Unmarshal([]byte(`{"model":"m","input":"abc"}`), &p)
	if !errors.Is(err, quota.ErrInvalid) {
		t.Fatalf("Unmarshal error = %v, want ErrInvalid", err)
	}
}

func TestCostBookConcurrent(t *testing.T) {
	book := defaultBook()
	done := make(chan struct{})
	for range 8 {
		go func() {
			defer func() { done <- struct{}{} }()
			for range 200 {
				credits, usd, err := book.Cost(quota.Usage{Model: "claude-3-5-sonnet", InputTokens: 1_000_000})
				if err != nil || credits != 360 || usd.String() != "3" {
					t.Errorf("Cost = %d, %s, %v", credits, usd, err)
					return
				}
				_ = book.Prices()
			}
		}()
	}
	for range 8 {
		<-done
	}
}

func BenchmarkCostBookCost(b *testing.B) {
	book := defaultBook()
	u := quota.Usage{Model: "claude-3-5-sonnet", InputTokens: 12345, OutputTokens: 678, CacheReadTokens: 9000}
	for b.Loop() {
		if _, _, err := book.Cost(u); err != nil {
			b.Fatal(err)
		}
	}
}

// TestCreditsMatchesCost: the integer path of Credits gives Cost's credits
// and Cost's errors, for prices and margins with and without more than
// nine decimals, token counts from 0 to the limit, and results past the
// counter's range.
func TestCreditsMatchesCost(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 11))
	decimal := func(maxInt int64, maxDecimals int) string {
		whole := rng.Int64N(maxInt + 1)
		d := rng.IntN(maxDecimals + 1)
		if d == 0 || whole == maxInt {
			return fmt.Sprint(whole)
		}
		frac := fmt.Sprintf("%0*d", d, rng.Int64N(int64(math.Pow10(min(d, 18)))))
		return fmt.Sprintf("%d.%s", whole, frac)
	}
	tokens := func() int64 {
		switch rng.IntN(6) {
		case 0:
			return 0
		case 1:
			return rng.Int64N(1_000_000_000_001) // up to the limit
		case 2:
			return -rng.Int64N(3) // 0 or an error
		default:
			return rng.Int64N(200_000)
		}
	}
	cases, integerPath := 0, 0
	for range 2000 {
		var prices []quota.Price
		for m := range 3 {
			prices = append(prices, quota.Price{Model: fmt.Sprint("m", m),
				Input: quota.MustDecimal(decimal(1000, 12)), Output: quota.MustDecimal(decimal(100_000, 10)),
				CacheWrite: quota.MustDecimal(decimal(50, 9)), CacheRead: quota.MustDecimal(decimal(1_000_000, 3))})
		}
		book := quota.NewCostBook(quota.MustDecimal(decimal(1000, 11)), prices)
		for range 100 {
			u := quota.Usage{Model: fmt.Sprint("m", rng.IntN(4)), InputTokens: tokens(), OutputTokens: tokens(),
				CacheWriteTokens: tokens(), CacheReadTokens: tokens()}
			want, _, wantErr := book.Cost(u)
			got, gotErr := book.Credits(u)
			if got != want || (gotErr == nil) != (wantErr == nil) || (gotErr != nil && gotErr.Error() != wantErr.Error()) {
				t.Fatalf("%+v with %+v margin %s: Credits %d (%v), Cost %d (%v)", u, prices, book.Margin(), got, gotErr, want, wantErr)
			}
			cases++
			if wantErr == nil && book.IntegerPath(u.Model) {
				integerPath++
			}
		}
	}
	if integerPath < cases/10 {
		t.Fatalf("only %d of %d cases took the integer path", integerPath, cases)
	}
	t.Logf("%d cases, %d on the integer path", cases, integerPath)
}

func BenchmarkCostBookCredits(b *testing.B) {
	book := defaultBook()
	u := quota.Usage{Model: "claude-3-5-sonnet", InputTokens: 12345, OutputTokens: 678, CacheReadTokens: 9000}
	for b.Loop() {
		if _, err := book.Credits(u); err != nil {
			b.Fatal(err)
		}
	}
}
