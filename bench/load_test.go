package bench

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fakeQuotad answers consumes: 503 for subjects ending in 7, 200 otherwise;
// it counts what it answered, and 401s a wrong key.
type fakeQuotad struct {
	ok, unavailable, unauthorized, bad atomic.Int64
}

func (f *fakeQuotad) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("Authorization") != "Bearer k" {
		f.unauthorized.Add(1)
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	var body struct {
		Subject string `json:"subject"`
	}
	if r.Method != http.MethodPost || r.Header.Get("Content-Type") != "application/json" || json.NewDecoder(r.Body).Decode(&body) != nil {
		f.bad.Add(1)
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	if strings.HasSuffix(body.Subject, "7") {
		f.unavailable.Add(1)
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = w.Write([]byte(`{"status":503}`))
		return
	}
	f.ok.Add(1)
	_, _ = w.Write([]byte(`{"applied":true}`))
}

func TestClosedLoopCountsAndStatuses(t *testing.T) {
	fake := &fakeQuotad{}
	srv := httptest.NewServer(fake)
	defer srv.Close()
	sc, _ := LookupScenario("consume-record")
	gen := DefaultGenConfig()
	gen.Subjects = 100
	var progressCalls atomic.Int64
	res, err := Run(context.Background(), nil, LoadOptions{
		URL: srv.URL + "/", Key: "k", Scenario: sc, Gen: gen,
		Mode: "closed", Concurrency: 4, Duration: 200 * time.Millisecond, Seed: 1,
		Progress: func(int64, time.Duration) { progressCalls.Add(1) },
	})
	if err != nil {
		t.Fatal(err)
	}
	ok, unavailable := fake.ok.Load(), fake.unavailable.Load()
	if fake.unauthorized.Load() != 0 || fake.bad.Load() != 0 {
		t.Fatalf("server saw %d unauthorized and %d bad requests", fake.unauthorized.Load(), fake.bad.Load())
	}
	if ok == 0 || unavailable == 0 {
		t.Fatalf("server answered %d ok and %d 503: want both", ok, unavailable)
	}
	if res.Requests != ok+unavailable || res.Status[200] != ok || res.Status[503] != unavailable || len(res.Status) != 2 {
		t.Errorf("client counted %d requests, statuses %v; server answered %d ok, %d 503", res.Requests, res.Status, ok, unavailable)
	}
	if res.OK != ok || res.Consumes != ok || res.Errors() != unavailable {
		t.Errorf("ok %d consumes %d errors %d; want %d, %d, %d", res.OK, res.Consumes, res.Errors(), ok, ok, unavailable)
	}
	if res.Hist.TotalCount() != res.Requests {
		t.Errorf("histogram holds %d values for %d requests", res.Hist.TotalCount(), res.Requests)
	}
	if len(res.TransportErrors) != 0 || res.Scheduled != 0 || res.Unsent != 0 {
		t.Errorf("transport errors %v scheduled %d unsent %d", res.TransportErrors, res.Scheduled, res.Unsent)
	}
	if res.RPS() <= 0 || res.MaxMicros <= 0 {
		t.Errorf("rps %v max %dµs", res.RPS(), res.MaxMicros)
	}
	if progressCalls.Load() == 0 {
		t.Error("progress never called")
	}
}

func TestOpenLoopSchedulesAtTheRate(t *testing.T) {
	fake := &fakeQuotad{}
	srv := httptest.NewServer(fake)
	defer srv.Close()
	sc, _ := LookupScenario("check-hot")
	res, err := Run(context.Background(), nil, LoadOptions{
		URL: srv.URL, Key: "k", Scenario: sc, Gen: DefaultGenConfig(),
		Mode: "open", Rate: 1000, Concurrency: 8, Duration: 200 * time.Millisecond, Seed: 1,
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.Scheduled != 200 {
		t.Errorf("scheduled %d, want 200 (1000/s for 200ms)", res.Scheduled)
	}
	if res.Requests+res.Unsent != res.Scheduled {
		t.Errorf("%d answered + %d unsent != %d scheduled", res.Requests, res.Unsent, res.Scheduled)
	}
	if res.Requests != fake.ok.Load()+fake.unavailable.Load() {
		t.Errorf("client %d, server %d", res.Requests, fake.ok.Load()+fake.unavailable.Load())
	}
}

func TestTransportErrorsAreCounted(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	u := srv.URL
	srv.Close() // nothing listens any more
	sc, _ := LookupScenario("floor")
	res, err := Run(context.Background(), nil, LoadOptions{
		URL: u, Key: "k", Scenario: sc, Gen: DefaultGenConfig(),
		Mode: "closed", Concurrency: 2, Duration: 50 * time.Millisecond,
	})
	if err == nil || res == nil || res.TransportErrors["conn-refused"] == 0 || res.Requests != 0 {
		t.Fatalf("err %v, result %+v: want conn-refused errors and no response", err, res)
	}
}

func TestSeedResetsNearSubjectsBeforeConsuming(t *testing.T) {
	var mu sync.Mutex
	calls := map[string][]string{} // subject → its calls in order
	var plans []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer admin" {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		mu.Lock()
		defer mu.Unlock()
		switch {
		case strings.HasPrefix(r.URL.Path, "/v1/plans/"):
			plans = append(plans, r.Method+" "+strings.TrimPrefix(r.URL.Path, "/v1/plans/"))
		case r.Method == http.MethodGet:
			_, _ = w.Write([]byte(`{"subject":"user:near-0","plan":"bench-near","meters":[{"meter":"credits","used":950}]}`))
			return
		case r.URL.Path == "/v1/consume":
			var b struct {
				Subject        string `json:"subject"`
				Amount         int64  `json:"amount"`
				IdempotencyKey string `json:"idempotency_key"`
			}
			if err := json.NewDecoder(r.Body).Decode(&b); err != nil || b.Amount != NearSeedUsed || b.IdempotencyKey == "" {
				w.WriteHeader(http.StatusBadRequest)
				return
			}
			calls[b.Subject] = append(calls[b.Subject], "consume")
		default:
			rest := strings.TrimPrefix(r.URL.Path, "/v1/subjects/")
			subject, action, _ := strings.Cut(rest, "/")
			if action == "" {
				action = r.Method
			}
			calls[subject] = append(calls[subject], action)
		}
		_, _ = w.Write([]byte(`{}`))
	}))
	defer srv.Close()
	res, err := Seed(context.Background(), nil, SeedOptions{URL: srv.URL, Key: "admin", Subjects: 5, Workers: 3})
	if err != nil {
		t.Fatal(err)
	}
	if res.NearUsed != NearSeedUsed {
		t.Errorf("near used %d", res.NearUsed)
	}
	if strings.Join(plans, ",") != "PUT bench-hot,PUT bench-near" {
		t.Errorf("plans: %v", plans)
	}
	if len(calls) != 10 {
		t.Errorf("%d subjects seeded, want 10: %v", len(calls), calls)
	}
	for s, c := range calls {
		want := "PUT"
		if strings.HasPrefix(s, NearPrefix) {
			want = "PUT reset consume"
		}
		if strings.Join(c, " ") != want {
			t.Errorf("%s: %v, want %s", s, c, want)
		}
	}
}

// TestBatchItemsWithErrorsAreNotCounted: a batch answered 200 counts only
// the items answered without an error (an overloaded quotad sheds items
// inside the batch, not the whole request).
func TestBatchItemsWithErrorsAreNotCounted(t *testing.T) {
	var answered, counted atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var body struct {
			Events []json.RawMessage `json:"events"`
		}
		if err := json.NewDecoder(r.Body).Decode(&body); err != nil || len(body.Events) != BatchItems {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		n := answered.Add(1)
		var b strings.Builder
		b.WriteString(`{"results":[`)
		for i := range BatchItems {
			if i > 0 {
				b.WriteByte(',')
			}
			if int64(i)%(n%4+2) == 0 { // a varying share shed
				b.WriteString(`{"error":{"type":"about:blank","title":"Service Unavailable","status":503,"detail":"shed: \"error\":{ is no item"}}`)
				continue
			}
			counted.Add(1)
			b.WriteString(`{"applied":true,"amount":1}`)
		}
		b.WriteString(`]}`)
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(b.String()))
	}))
	defer srv.Close()
	sc, _ := LookupScenario("consume-batch")
	gen := DefaultGenConfig()
	gen.Subjects = 100
	res, err := Run(context.Background(), nil, LoadOptions{
		URL: srv.URL + "/", Key: "k", Scenario: sc, Gen: gen,
		Mode: "closed", Concurrency: 2, Duration: 200 * time.Millisecond, Seed: 1,
	})
	if err != nil {
		t.Fatal(err)
	}
	if answered.Load() == 0 || res.OK != answered.Load() {
		t.Fatalf("server answered %d batches, client counted %d ok", answered.Load(), res.OK)
	}
	if res.Consumes != counted.Load() || res.Consumes == res.OK*BatchItems {
		t.Errorf("client counted %d consumes in %d batches; the server counted %d", res.Consumes, res.OK, counted.Load())
	}
}
