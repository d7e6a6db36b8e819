package quota

import (
	"math/big"
	"math/bits"
	"slices"
	"strings"
)

// Bounds enforced by ValidatePrice and CostBook.Cost.
const (
	costMaxModelLen = 64
	costMaxTokens   = 1_000_000_000_000 // per token kind in one Usage
)

var (
	costMaxPrice  = MustDecimal("1000000")     // USD per million tokens
	costMaxMargin = MustDecimal("1000")        // 100000 %
	costPerToken  = big.NewRat(1, 1_000_000)   // prices are per million tokens
	costOne       = big.NewRat(1, 1)           // 1, read only
	costCentsUSD  = new(big.Rat).SetInt64(100) // credits per USD before margin
)

// Price is what a model costs in USD per million tokens.
type Price struct {
	Model      string  `json:"model"`
	Input      Decimal `json:"input"`       // USD per million input tokens
	Output     Decimal `json:"output"`      // USD per million output tokens
	CacheWrite Decimal `json:"cache_write"` // USD per million tokens written to the prompt cache
	CacheRead  Decimal `json:"cache_read"`  // USD per million tokens read from the prompt cache
}

// Usage is the token usage of one model call.
type Usage struct {
	Model            string `json:"model"`
	InputTokens      int64  `json:"input_tokens"`
	OutputTokens     int64  `json:"output_tokens"`
	CacheWriteTokens int64  `json:"cache_write_tokens,omitempty"`
	CacheReadTokens  int64  `json:"cache_read_tokens,omitempty"`
}

// CostBook prices token usage. It is immutable once built; replace it to
// change prices. It is safe for concurrent use.
type CostBook struct {
	margin Decimal
	prices map[string]Price
	sorted []Price  // prices sorted by model
	factor *big.Rat // credits per token-USD-per-million: 100 × (1 + margin) / 1e6; read only
	// The integer form of the same book, for Credits: each price and
	// 1 + margin times 10^9 where that is exact (nano-USD per million
	// tokens); scaled[model] is missing, or marginOK false, when not.
	scaled   map[string][4]uint64
	margin9  uint64
	marginOK bool
}

// NewCostBook returns a CostBook that charges margin on top of the provider
// cost (0.2 means 20 %) and knows prices. A later price for the same model
// replaces an earlier one. NewCostBook does not validate; check prices with
// ValidatePrice and the margin with ValidateMargin first.
func NewCostBook(margin Decimal, prices []Price) *CostBook {
	m := make(map[string]Price, len(prices))
	for _, p := range prices {
		m[p.Model] = p
	}
	return newCostBook(margin, m)
}

func newCostBook(margin Decimal, prices map[string]Price) *CostBook {
	sorted := make([]Price, 0, len(prices))
	for _, p := range prices {
		sorted = append(sorted, p)
	}
	slices.SortFunc(sorted, func(a, b Price) int { return strings.Compare(a.Model, b.Model) })
	factor := new(big.Rat).Add(costOne, margin.rat())
	onePlus := new(big.Rat).Set(factor)
	factor.Mul(factor, costCentsUSD)
	factor.Mul(factor, costPerToken)
	b := &CostBook{margin: margin, prices: prices, sorted: sorted, factor: factor, scaled: make(map[string][4]uint64, len(prices))}
	b.margin9, b.marginOK = nano(onePlus)
	for model, p := range prices {
		var sc [4]uint64
		ok := true
		for i, d := range [4]Decimal{p.Input, p.Output, p.CacheWrite, p.CacheRead} {
			var exact bool
			if sc[i], exact = nano(d.rat()); !exact {
				ok = false
			}
		}
		if ok {
			b.scaled[model] = sc
		}
	}
	return b
}

// nano answers r × 10^9 when that is a whole number in [0, 2^63).
func nano(r *big.Rat) (uint64, bool) {
	if r.Sign() < 0 {
		return 0, false
	}
	n := new(big.Int).Mul(r.Num(), big.NewInt(1_000_000_000))
	q, m := new(big.Int).QuoRem(n, r.Denom(), new(big.Int))
	if m.Sign() != 0 || !q.IsInt64() {
		return 0, false
	}
	return uint64(q.Int64()), true
}

// Margin returns the margin charged on top of the provider cost.
func (b *CostBook) Margin() Decimal { return b.margin }

// Prices returns a copy of all prices, sorted by model.
func (b *CostBook) Prices() []Price { return slices.Clone(b.sorted) }

// Price returns the price of model and whether the book has one.
func (b *CostBook) Price(model string) (Price, bool) {
	p, ok := b.prices[model]
	return p, ok
}

// With returns a copy of b in which p is added or replaces the price of
// p.Model. b itself is unchanged.
func (b *CostBook) With(p Price) *CostBook {
	m := make(map[string]Price, len(b.prices)+1)
	for k, v := range b.prices {
		m[k] = v
	}
	m[p.Model] = p
	return newCostBook(b.margin, m)
}

// Without returns a copy of b without the price of model. b itself is
// unchanged.
func (b *CostBook) Without(model string) *CostBook {
	m := make(map[string]Price, len(b.prices))
	for k, v := range b.prices {
		if k != model {
			m[k] = v
		}
	}
	return newCostBook(b.margin, m)
}

// Cost returns what u costs: credits = ceil(usd × 100 × (1 + margin)) and the
// raw provider cost usd = Σ tokens × price / 1e6, both computed exactly.
//
// Errors are ErrInvalid: an unknown model (field "usage.model"), a negative
// token count or one above 1e12 (fields "usage.input_tokens",
// "usage.output_tokens", "usage.cache_write_tokens",
// "usage.cache_read_tokens"), and credits that overflow int64 (field
// "usage").
func (b *CostBook) Cost(u Usage) (credits int64, usd Decimal, err error) {
	p, err := b.check(u)
	if err != nil {
		return 0, Decimal{}, err
	}
	terms := [...]struct {
		tokens int64
		price  Decimal
	}{
		{u.InputTokens, p.Input},
		{u.OutputTokens, p.Output},
		{u.CacheWriteTokens, p.CacheWrite},
		{u.CacheReadTokens, p.CacheRead},
	}
	// sum is Σ tokens × USD per million tokens.
	sum := new(big.Rat)
	var term big.Rat
	for _, t := range terms {
		if t.tokens == 0 || t.price.IsZero() {
			continue
		}
		term.SetInt64(t.tokens)
		term.Mul(&term, t.price.r)
		sum.Add(sum, &term)
	}
	if sum.Sign() == 0 {
		return 0, Decimal{}, nil
	}
	credits, ok := Decimal{r: new(big.Rat).Mul(sum, b.factor)}.Ceil()
	usd = Decimal{r: sum.Mul(sum, costPerToken)}
	if !ok {
		return 0, Decimal{}, Invalid("usage", "cost of %s USD overflows the credit counter", usd)
	}
	return credits, usd, nil
}

// check validates u and answers its model's price.
func (b *CostBook) check(u Usage) (Price, error) {
	if u.Model == "" {
		return Price{}, Invalid("usage.model", "is required")
	}
	p, ok := b.prices[u.Model]
	if !ok {
		name := u.Model
		if len(name) > costMaxModelLen {
			name = name[:costMaxModelLen] + "..."
		}
		return Price{}, Invalid("usage.model", "unknown model %q", name)
	}
	for _, t := range [...]struct {
		field  string
		tokens int64
	}{
		{"usage.input_tokens", u.InputTokens},
		{"usage.output_tokens", u.OutputTokens},
		{"usage.cache_write_tokens", u.CacheWriteTokens},
		{"usage.cache_read_tokens", u.CacheReadTokens},
	} {
		if t.tokens < 0 {
			return Price{}, Invalid(t.field, "must not be negative, got %d", t.tokens)
		}
		if t.tokens > costMaxTokens {
			return Price{}, Invalid(t.field, "must be at most %d, got %d", int64(costMaxTokens), t.tokens)
		}
	}
	return p, nil
}

// Credits is Cost's credits alone, what a priced consume needs: the same
// number and the same errors, in integer arithmetic without allocating when
// the model's prices and the margin have at most nine decimals (whole
// nano-USD), through Cost otherwise.
//
//	credits = ceil(Σ tokens × price × 100 × (1 + margin) / 10^6)
//	        = ceil(Σ tokens × P × 100 × M / 10^24)
//
// with P and M the prices and 1 + margin times 10^9. tokens ≤ 10^12 < 2^40
// and P ≤ 10^15 < 2^50, so the sum of four products fits 128 bits; times
// 100 × M it fits 192, and two divisions by 10^12 bring it back.
func (b *CostBook) Credits(u Usage) (int64, error) {
	if _, err := b.check(u); err != nil {
		return 0, err
	}
	sc, ok := b.scaled[u.Model]
	if !ok || !b.marginOK || b.margin9 > (1<<64-1)/100 {
		credits, _, err := b.Cost(u)
		return credits, err
	}
	var hi, lo uint64
	for i, tokens := range [4]int64{u.InputTokens, u.OutputTokens, u.CacheWriteTokens, u.CacheReadTokens} {
		h, l := bits.Mul64(uint64(tokens), sc[i])
		var c uint64
		lo, c = bits.Add64(lo, l, 0)
		hi += h + c
	}
	k := 100 * b.margin9
	w1, w0 := bits.Mul64(lo, k)
	h1, h0 := bits.Mul64(hi, k)
	w1, c := bits.Add64(w1, h0, 0)
	w2 := h1 + c
	const d = 1_000_000_000_000
	w2, w1, w0, rem1 := div192(w2, w1, w0, d)
	w2, w1, w0, rem2 := div192(w2, w1, w0, d)
	if rem1 != 0 || rem2 != 0 {
		var carry uint64
		w0, carry = bits.Add64(w0, 1, 0)
		w1 += carry
	}
	if w2 != 0 || w1 != 0 || w0 >= 1<<63 {
		credits, _, err := b.Cost(u) // past the counter's range: Cost words the error
		return credits, err
	}
	return int64(w0), nil
}

// div192 divides the 192-bit number (w2, w1, w0) by d.
func div192(w2, w1, w0, d uint64) (q2, q1, q0, rem uint64) {
	q2, rem = bits.Div64(0, w2, d)
	q1, rem = bits.Div64(rem, w1, d)
	q0, rem = bits.Div64(rem, w0, d)
	return q2, q1, q0, rem
}

// ValidatePrice checks that p.Model is 1 to 64 characters from
// [A-Za-z0-9._:/-] and that every price is between 0 and 1e6 USD per million
// tokens. Errors are ErrInvalid naming the JSON field ("model", "input",
// "output", "cache_write" or "cache_read").
func ValidatePrice(p Price) error {
	if p.Model == "" {
		return Invalid("model", "is required")
	}
	if len(p.Model) > costMaxModelLen {
		return Invalid("model", "must be at most %d characters", costMaxModelLen)
	}
	for i := 0; i < len(p.Model); i++ {
		if !isModelNameChar(p.Model[i]) {
			return Invalid("model", "%q may only contain letters, digits and . _ : / -", p.Model)
		}
	}
	for _, f := range [...]struct {
		field string
		v     Decimal
	}{
		{"input", p.Input},
		{"output", p.Output},
		{"cache_write", p.CacheWrite},
		{"cache_read", p.CacheRead},
	} {
		if f.v.Sign() < 0 {
			return Invalid(f.field, "must not be negative, got %s", f.v)
		}
		if f.v.Cmp(costMaxPrice) > 0 {
			return Invalid(f.field, "must be at most %s, got %s", costMaxPrice, f.v)
		}
	}
	return nil
}

// ValidateMargin checks that m is between 0 and 1000 (0 % to 100000 %).
// Errors are ErrInvalid for the field "margin".
func ValidateMargin(m Decimal) error {
	if m.Sign() < 0 {
		return Invalid("margin", "must not be negative, got %s", m)
	}
	if m.Cmp(costMaxMargin) > 0 {
		return Invalid("margin", "must be at most %s, got %s", costMaxMargin, m)
	}
	return nil
}

func isModelNameChar(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	return c == '.' || c == '_' || c == ':' || c == '/' || c == '-'
}

// DefaultPrices returns the built-in prices in USD per million tokens,
// sorted by model. The slice is new on every call.
func DefaultPrices() []Price {
	return []Price{
		{Model: "claude-3-5-sonnet", Input: MustDecimal("3"), Output: MustDecimal("15"), CacheWrite: MustDecimal("3.75"), CacheRead: MustDecimal("0.30")},
		{Model: "claude-3-haiku", Input: MustDecimal("0.25"), Output: MustDecimal("1.25"), CacheWrite: MustDecimal("0.30"), CacheRead: MustDecimal("0.03")},
		{Model: "gpt-4o", Input: MustDecimal("2.5"), Output: MustDecimal("10")},
		{Model: "gpt-4o-mini", Input: MustDecimal("0.15"), Output: MustDecimal("0.6")},
	}
}

// DefaultMargin returns the built-in margin, 0.2 (20 %).
func DefaultMargin() Decimal { return MustDecimal("0.2") }
