package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// The seeded plans.
const (
	PlanHot       = "bench-hot"
	PlanNear      = "bench-near"
	HotLimit      = 1_000_000_000 // credits per month: checks stay far from it
	NearLimit     = 1_000         // credits per month
	NearSeedUsed  = 950           // within 10% of NearLimit: checks read L2
	SeedWorkers   = 32
	seedRetries   = 3
	seedErrorsMax = 5
)

// SeedOptions configures Seed.
type SeedOptions struct {
	URL      string
	Key      string // an admin key
	Subjects int
	Workers  int // default SeedWorkers
	// Progress, when set, is called with subjects done out of 2×Subjects.
	Progress func(done, total int64)
}

// SeedResult says what Seed did.
type SeedResult struct {
	Requests int64
	Elapsed  time.Duration
	NearUsed int64 // used of user:near-0 after seeding, read back
}

// Seed creates the plans bench-hot and bench-near and the subjects
// user:hot-<i> and user:near-<i> for i in [0, Subjects); each near subject
// is reset, then consumes NearSeedUsed (record), so running Seed twice
// leaves the same state.
func Seed(ctx context.Context, c *http.Client, o SeedOptions) (*SeedResult, error) {
	if o.Subjects < 1 {
		return nil, fmt.Errorf("subjects: must be at least 1")
	}
	if o.Workers < 1 {
		o.Workers = SeedWorkers
	}
	if c == nil {
		c = NewClient(o.Workers, 30*time.Second)
	}
	base := trimSlash(o.URL)
	start := time.Now()
	var requests atomic.Int64
	call := func(ctx context.Context, method, path, body string) ([]byte, error) {
		requests.Add(1)
		return adminCall(ctx, c, o.Key, method, base+path, body)
	}
	plans := []struct {
		name  string
		limit int64
	}{{PlanHot, HotLimit}, {PlanNear, NearLimit}}
	for _, p := range plans {
		body := `{"limits":{"credits":{"limit":` + strconv.FormatInt(p.limit, 10) + `,"period":"month"}}}`
		if _, err := call(ctx, http.MethodPut, "/v1/plans/"+p.name, body); err != nil {
			return nil, err
		}
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	total := int64(2 * o.Subjects)
	jobs := make(chan int64)
	var done atomic.Int64
	var mu, progressMu sync.Mutex
	var errs []error
	fail := func(err error) {
		mu.Lock()
		defer mu.Unlock()
		errs = append(errs, err)
		if len(errs) >= seedErrorsMax {
			cancel()
		}
	}
	// The near consumes carry an idempotency key unique to this seeding, so
	// a retried consume counts once and a second seeding (after its reset)
	// is not taken for a duplicate of the first.
	runID := strconv.FormatInt(time.Now().UnixNano(), 36)
	var wg sync.WaitGroup
	for range o.Workers {
		wg.Go(func() {
			for j := range jobs {
				i := int(j / 2)
				var err error
				if j%2 == 0 {
					subject := HotPrefix + strconv.Itoa(i)
					_, err = call(ctx, http.MethodPut, "/v1/subjects/"+url.PathEscape(subject), `{"plan":"`+PlanHot+`"}`)
				} else {
					err = seedNear(ctx, call, NearPrefix+strconv.Itoa(i), runID)
				}
				if err != nil {
					fail(err)
					continue
				}
				n := done.Add(1)
				if o.Progress != nil && (n%256 == 0 || n == total) {
					progressMu.Lock()
					o.Progress(n, total)
					progressMu.Unlock()
				}
			}
		})
	}
feed:
	for j := range total {
		select {
		case jobs <- j:
		case <-ctx.Done():
			break feed
		}
	}
	close(jobs)
	wg.Wait()
	if len(errs) > 0 {
		return nil, fmt.Errorf("seeding failed (%d errors shown): %w", len(errs), errs[0])
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}

	// Read one near subject back: the seeding worked if it holds 950.
	res := &SeedResult{Requests: requests.Load(), Elapsed: time.Since(start)}
	b, err := call(ctx, http.MethodGet, "/v1/subjects/"+url.PathEscape(NearPrefix+"0"), "")
	if err != nil {
		return nil, err
	}
	var view struct {
		Plan   string `json:"plan"`
		Meters []struct {
			Meter string `json:"meter"`
			Used  int64  `json:"used"`
		} `json:"meters"`
	}
	if err := json.Unmarshal(b, &view); err != nil {
		return nil, fmt.Errorf("read back %s0: %w", NearPrefix, err)
	}
	for _, m := range view.Meters {
		if m.Meter == "credits" {
			res.NearUsed = m.Used
		}
	}
	if view.Plan != PlanNear || res.NearUsed != NearSeedUsed {
		return res, fmt.Errorf("read back %s0: plan %q used %d, want plan %q used %d", NearPrefix, view.Plan, res.NearUsed, PlanNear, NearSeedUsed)
	}
	return res, nil
}

func seedNear(ctx context.Context, call func(ctx context.Context, method, path, body string) ([]byte, error), subject, runID string) error {
	p := "/v1/subjects/" + url.PathEscape(subject)
	if _, err := call(ctx, http.MethodPut, p, `{"plan":"`+PlanNear+`"}`); err != nil {
		return err
	}
	if _, err := call(ctx, http.MethodPost, p+"/reset", ""); err != nil {
		return err
	}
	_, err := call(ctx, http.MethodPost, "/v1/consume", `{"subject":"`+subject+`","amount":`+strconv.Itoa(NearSeedUsed)+`,"idempotency_key":"bench-seed-`+runID+`"}`)
	return err
}

// adminCall does one admin request, retrying transport errors and 5xx a
// few times, and returns the answer body of a 2xx.
func adminCall(ctx context.Context, c *http.Client, key, method, u, body string) ([]byte, error) {
	var last error
	for attempt := range seedRetries {
		if attempt > 0 {
			sleepCtx(ctx, time.Duration(attempt)*200*time.Millisecond)
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		var rd io.Reader
		if body != "" {
			rd = bytes.NewReader([]byte(body))
		}
		req, err := http.NewRequestWithContext(ctx, method, u, rd)
		if err != nil {
			return nil, err
		}
		req.Header.Set("Authorization", "Bearer "+key)
		if body != "" {
			req.Header.Set("Content-Type", "application/json")
		}
		resp, err := c.Do(req)
		if err != nil {
			last = fmt.Errorf("%s %s: %w", method, u, err)
			continue
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			last = fmt.Errorf("%s %s: %w", method, u, err)
			continue
		}
		if resp.StatusCode/100 == 2 {
			return b, nil
		}
		last = fmt.Errorf("%s %s: status %d: %s", method, u, resp.StatusCode, bytes.TrimSpace(b))
		if resp.StatusCode < 500 {
			break // a 4xx will not change
		}
	}
	return nil, last
}
