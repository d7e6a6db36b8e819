package quota

import (
	"math/big"
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
	factor.Mul(factor, costCentsUSD)
	factor.Mul(factor, costPerToken)
	return &CostBook{margin: margin, prices: prices, sorted: sorted, factor: factor}
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

// Cost returns what u costs: credits = ceil(usd × 100 × (1 + margin)) and the
// raw provider cost usd = Σ tokens × price / 1e6, both computed exactly.
//
// Errors are ErrInvalid: an unknown model (field "usage.model"), a negative
// token count or one above 1e12 (fields "usage.input_tokens",
// "usage.output_tokens", "usage.cache_write_tokens",
// "usage.cache_read_tokens"), and credits that overflow int64 (field
// "usage").
func (b *CostBook) Cost(u Usage) (credits int64, usd Decimal, err error) {
	if u.Model == "" {
		return 0, Decimal{}, Invalid("usage.model", "is required")
	}
	p, ok := b.prices[u.Model]
	if !ok {
		name := u.Model
		if len(name) > costMaxModelLen {
			name = name[:costMaxModelLen] + "..."
		}
		return 0, Decimal{}, Invalid("usage.model", "unknown model %q", name)
	}
	terms := [...]struct {
		field  string
		tokens int64
		price  Decimal
	}{
		{"usage.input_tokens", u.InputTokens, p.Input},
		{"usage.output_tokens", u.OutputTokens, p.Output},
		{"usage.cache_write_tokens", u.CacheWriteTokens, p.CacheWrite},
		{"usage.cache_read_tokens", u.CacheReadTokens, p.CacheRead},
	}
	for _, t := range terms {
		if t.tokens < 0 {
			return 0, Decimal{}, Invalid(t.field, "must not be negative, got %d", t.tokens)
		}
		if t.tokens > costMaxTokens {
			return 0, Decimal{}, Invalid(t.field, "must be at most %d, got %d", int64(costMaxTokens), t.tokens)
		}
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
	credits, ok = Decimal{r: new(big.Rat).Mul(sum, b.factor)}.Ceil()
	usd = Decimal{r: sum.Mul(sum, costPerToken)}
	if !ok {
		return 0, Decimal{}, Invalid("usage", "cost of %s USD overflows the credit counter", usd)
	}
	return credits, usd, nil
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
