package bench

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync/atomic"
)

// Subject name prefixes of the seeded population (see Seed).
const (
	HotPrefix  = "user:hot-"  // plan bench-hot: far from its limit, L1 answers checks
	NearPrefix = "user:near-" // plan bench-near: seeded within 10% of its limit, checks read L2
)

// Request is one request of a scenario: a POST of Body to Path.
type Request struct {
	Path    string
	Body    []byte
	Consume bool // a consume: counts in "Postgres rows per 1,000 consumes"
	Items   int  // consumes the request carries when more than one (a batch)
	// Then, when set, makes the request's 2xx answer lead to a second
	// request of the same operation (a reservation's commit): it appends
	// that request's body to dst, or answers false to stop.
	Then func(answer, dst []byte) (Request, bool)
}

// consumes is how many consumes answer, a 2xx answer to r, counted. A
// batch is answered 200 with a result per item, and an item answered
// with an error (shed under overload, refused) counted nothing.
func (r *Request) consumes(answer []byte) int64 {
	if !r.Consume {
		return 0
	}
	if r.Items <= 1 {
		return 1
	}
	return max(0, int64(r.Items)-int64(bytes.Count(answer, itemError)))
}

// itemError opens a batch item's error; inside a JSON string its quotes
// would be escaped, so it marks an item's error and nothing else.
var itemError = []byte(`"error":{`)

// Scenario produces the requests of one benchmark case.
type Scenario struct {
	Name        string
	Description string
	// Next appends the body of the next request to dst and returns the
	// request. It is called by one worker at a time with that worker's Gen.
	Next func(g *Gen, dst []byte) Request
}

// Scenarios is every scenario, in the order a suite runs and reports them:
// the floor first, so that the baseline runs before the consume runs leave
// Postgres work behind (the flush's tail, autovacuum of the ledger,
// checkpoints). In make bench the floor measured much the same either way
// (60-65k req/s last, 61k first, 2026-11-27), below the 70-72k of a quick
// run against one quotad; its place is for a clean baseline, not a number.
var Scenarios = []Scenario{
	{"floor", `POST /v1/floor {"subject":"user:hot-<i>","amount":A}: JSON in and out, no quota work, no auth (QUOTAD_BENCH_FLOOR=1)`, nextFloor},
	{"check-hot", `POST /v1/check {"subject":"user:hot-<i>","amount":A} (plan bench-hot, far from its limit: L1 answers)`, nextCheckHot},
	{"check-near-limit", `POST /v1/check for user:near-<i> (plan bench-near, seeded 950 of 1,000 used: L2 reads)`, nextCheckNear},
	{"consume-record", `POST /v1/consume {"subject":"user:hot-<i>","amount":A,"idempotency_key":K} (mode record; a unique key, as billing clients send)`, nextConsumeRecord},
	{"consume-record-nokey", `POST /v1/consume {"subject":"user:hot-<i>","amount":A} (mode record, no idempotency key)`, nextConsumeRecordNoKey},
	{"consume-enforce", `POST /v1/consume {"subject":"user:hot-<i>","amount":A,"mode":"enforce","idempotency_key":K}`, nextConsumeEnforce},
	{"mixed", `90% check-hot, 10% consume-record, drawn per request`, nextMixed},
	{"consume-priced", `POST /v1/consume {"subject":"user:hot-<i>","usage":{"model":M,"input_tokens":I,"output_tokens":O},"idempotency_key":K}`, nextConsumePriced},
	{"reserve-commit", `POST /v1/reservations {"subject":"user:hot-<i>","amount":A,"idempotency_key":K}, then POST /v1/reservations/<id>/commit {"amount":A}: two requests per operation`, nextReserveCommit},
	{"consume-batch", `POST /v1/consume/batch with 100 record consumes of random user:hot-<i>, each with a unique idempotency key`, nextConsumeBatch},
}

// PostgresScenarios are the scenarios the suite runs on the Postgres-only
// tiers by default.
var PostgresScenarios = []string{"consume-record", "consume-enforce", "check-hot", "mixed"}

// LookupScenario finds a scenario by name.
func LookupScenario(name string) (Scenario, bool) {
	for _, s := range Scenarios {
		if s.Name == name {
			return s, true
		}
	}
	return Scenario{}, false
}

// ScenarioNames lists the scenario names.
func ScenarioNames() []string {
	names := make([]string, len(Scenarios))
	for i, s := range Scenarios {
		names[i] = s.Name
	}
	return names
}

// ParseScenarios resolves a comma-separated list of scenario names; "all"
// is every scenario.
func ParseScenarios(list string) ([]Scenario, error) {
	if strings.TrimSpace(list) == "all" {
		return append([]Scenario(nil), Scenarios...), nil
	}
	var out []Scenario
	for _, name := range strings.Split(list, ",") {
		name = strings.TrimSpace(name)
		if name == "" {
			continue
		}
		s, ok := LookupScenario(name)
		if !ok {
			return nil, fmt.Errorf("unknown scenario %q (have %s)", name, strings.Join(ScenarioNames(), ", "))
		}
		out = append(out, s)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no scenario given")
	}
	return out, nil
}

// RoundRobin is a scenario cycling through scs request by request (per
// worker); the warm-up runs it over a target's scenarios.
func RoundRobin(scs []Scenario) Scenario {
	names := make([]string, len(scs))
	for i, s := range scs {
		names[i] = s.Name
	}
	return Scenario{
		Name:        "round-robin(" + strings.Join(names, ",") + ")",
		Description: "each worker cycles through the scenarios",
		Next: func(g *Gen, dst []byte) Request {
			s := scs[g.turn%len(scs)]
			g.turn++
			return s.Next(g, dst)
		},
	}
}

// GenConfig is what requests are made of.
type GenConfig struct {
	Subjects     int    // population size: subjects <prefix>0 .. <prefix>N-1
	Dist         string // "uniform" or "zipf" (s = 1.1)
	Amount       int64  // amount of checks and unpriced consumes
	Model        string // model of consume-priced
	InputTokens  int64
	OutputTokens int64
}

// DefaultGenConfig is the population and amounts of the suite.
func DefaultGenConfig() GenConfig {
	return GenConfig{Subjects: 10000, Dist: "uniform", Amount: 1, Model: "claude-3-5-sonnet", InputTokens: 1000, OutputTokens: 200}
}

// Validate reports a bad configuration.
func (c GenConfig) Validate() error {
	if c.Subjects < 1 {
		return fmt.Errorf("subjects: must be at least 1")
	}
	if c.Dist != "uniform" && c.Dist != "zipf" {
		return fmt.Errorf("dist: %q is not uniform or zipf", c.Dist)
	}
	if c.Amount < 1 {
		return fmt.Errorf("amount: must be at least 1")
	}
	if c.Model == "" {
		return fmt.Errorf("model: must not be empty")
	}
	if c.InputTokens < 0 || c.OutputTokens < 0 {
		return fmt.Errorf("tokens: must not be negative")
	}
	return nil
}

// ZipfS is the exponent of the zipf subject distribution.
const ZipfS = 1.1

// Gen draws the subjects and the scenario choices of one worker. It is not
// safe for concurrent use: each worker has its own, seeded from the worker
// index, so a run is reproducible request by request per worker.
type Gen struct {
	cfg   GenConfig
	rng   *rand.Rand
	zipf  *rand.Zipf
	model []byte // the model as a JSON string, quotes included
	turn  int    // RoundRobin position
}

// NewGen returns the generator of one worker.
func NewGen(cfg GenConfig, seed uint64) *Gen {
	g := &Gen{cfg: cfg, rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))}
	if cfg.Dist == "zipf" && cfg.Subjects > 1 {
		g.zipf = rand.NewZipf(g.rng, ZipfS, 1, uint64(cfg.Subjects-1))
	}
	g.model, _ = json.Marshal(cfg.Model) // a string always marshals
	return g
}

// Subject draws a subject index in [0, Subjects).
func (g *Gen) Subject() int {
	if g.zipf != nil {
		return int(g.zipf.Uint64())
	}
	return g.rng.IntN(g.cfg.Subjects)
}

func appendSubject(dst []byte, prefix string, i int) []byte {
	dst = append(dst, `{"subject":"`...)
	dst = append(dst, prefix...)
	dst = strconv.AppendInt(dst, int64(i), 10)
	return append(dst, '"')
}

func appendAmount(dst []byte, amount int64) []byte {
	dst = append(dst, `,"amount":`...)
	return strconv.AppendInt(dst, amount, 10)
}

func nextCheckHot(g *Gen, dst []byte) Request {
	b := appendAmount(appendSubject(dst, HotPrefix, g.Subject()), g.cfg.Amount)
	return Request{Path: "/v1/check", Body: append(b, '}')}
}

func nextCheckNear(g *Gen, dst []byte) Request {
	b := appendAmount(appendSubject(dst, NearPrefix, g.Subject()), g.cfg.Amount)
	return Request{Path: "/v1/check", Body: append(b, '}')}
}

func nextConsumeRecord(g *Gen, dst []byte) Request {
	b := appendKey(appendAmount(appendSubject(dst, HotPrefix, g.Subject()), g.cfg.Amount), g)
	return Request{Path: "/v1/consume", Body: append(b, '}'), Consume: true}
}

func nextConsumeRecordNoKey(g *Gen, dst []byte) Request {
	b := appendAmount(appendSubject(dst, HotPrefix, g.Subject()), g.cfg.Amount)
	return Request{Path: "/v1/consume", Body: append(b, '}'), Consume: true}
}

func nextConsumeEnforce(g *Gen, dst []byte) Request {
	b := appendKey(appendAmount(appendSubject(dst, HotPrefix, g.Subject()), g.cfg.Amount), g)
	return Request{Path: "/v1/consume", Body: append(b, `,"mode":"enforce"}`...), Consume: true}
}

func nextMixed(g *Gen, dst []byte) Request {
	if g.rng.IntN(10) == 0 {
		return nextConsumeRecord(g, dst)
	}
	return nextCheckHot(g, dst)
}

func nextConsumePriced(g *Gen, dst []byte) Request {
	b := appendSubject(dst, HotPrefix, g.Subject())
	b = append(b, `,"usage":{"model":`...)
	b = append(b, g.model...)
	b = append(b, `,"input_tokens":`...)
	b = strconv.AppendInt(b, g.cfg.InputTokens, 10)
	b = append(b, `,"output_tokens":`...)
	b = strconv.AppendInt(b, g.cfg.OutputTokens, 10)
	b = appendKey(append(b, '}'), g)
	return Request{Path: "/v1/consume", Body: append(b, '}'), Consume: true}
}

func nextFloor(g *Gen, dst []byte) Request {
	b := appendAmount(appendSubject(dst, HotPrefix, g.Subject()), g.cfg.Amount)
	return Request{Path: "/v1/floor", Body: append(b, '}')}
}

// appendKey appends a unique idempotency key, as a billing client sends
// with every consume: this process's salt and a number no other request
// of the process had. Not drawn from the worker's generator: those are
// seeded alike in every run and scenario (runs repeat request by
// request), so their keys would repeat across scenarios and the warm-up
// and get a first answer back, or a 409 for another kind of request.
func appendKey(dst []byte, _ *Gen) []byte {
	dst = append(dst, `,"idempotency_key":"`...)
	dst = strconv.AppendUint(dst, keySalt, 36)
	dst = append(dst, '-')
	dst = strconv.AppendUint(dst, keySeq.Add(1), 36)
	return append(dst, '"')
}

// keySalt makes this process's idempotency keys its own; keySeq numbers
// them.
var (
	keySalt = rand.Uint64()
	keySeq  atomic.Uint64
)

func nextReserveCommit(g *Gen, dst []byte) Request {
	b := appendKey(appendAmount(appendSubject(dst, HotPrefix, g.Subject()), g.cfg.Amount), g)
	amount := g.cfg.Amount
	return Request{Path: "/v1/reservations", Body: append(b, '}'), Then: func(answer, dst []byte) (Request, bool) {
		id, ok := reservationID(answer)
		if !ok {
			return Request{}, false
		}
		dst = append(dst, `{"amount":`...)
		dst = strconv.AppendInt(dst, amount, 10)
		return Request{Path: "/v1/reservations/" + id + "/commit", Body: append(dst, '}'), Consume: true}, true
	}}
}

// reservationID finds the id in a reservation's answer without decoding
// all of it (ids hold no quotes or escapes).
func reservationID(answer []byte) (string, bool) {
	const field = `"id":"`
	i := strings.Index(string(answer), field)
	if i < 0 {
		return "", false
	}
	rest := string(answer[i+len(field):])
	j := strings.IndexByte(rest, '"')
	if j < 0 {
		return "", false
	}
	return rest[:j], true
}

// BatchItems is how many consumes a consume-batch request holds.
const BatchItems = 100

func nextConsumeBatch(g *Gen, dst []byte) Request {
	b := append(dst, `{"events":[`...)
	for i := range BatchItems {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendKey(appendAmount(appendSubject(b, HotPrefix, g.Subject()), g.cfg.Amount), g)
		b = append(b, '}')
	}
	return Request{Path: "/v1/consume/batch", Body: append(b, "]}"...), Consume: true, Items: BatchItems}
}
