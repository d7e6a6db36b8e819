package chat_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"

	"github.com/quotad/quotad/client"
	"github.com/quotad/quotad/client/quotadtest"
	"github.com/quotad/quotad/examples/chat"
	"github.com/quotad/quotad/quota"
)

func TestMain(m *testing.M) { quotadtest.Main(m) }

type answer struct {
	Subject   string      `json:"subject"`
	Reply     string      `json:"reply"`
	Usage     quota.Usage `json:"usage"`
	Credits   int64       `json:"credits"`
	Remaining int64       `json:"remaining"`
	// the problem of a refusal
	Status    int    `json:"status"`
	Detail    string `json:"detail"`
	Limit     int64  `json:"limit"`
	ResetsAt  string `json:"resets_at"`
	Requested int64  `json:"requested"`
}

// send posts message to the chat service with headers ("Name: value").
func send(t *testing.T, hc *http.Client, base, message string, headers ...string) (*http.Response, answer) {
	t.Helper()
	body, _ := json.Marshal(map[string]string{"message": message})
	req, err := http.NewRequest(http.MethodPost, base+"/chat", strings.NewReader(string(body)))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	for _, h := range headers {
		k, v, _ := strings.Cut(h, ": ")
		req.Header.Set(k, v)
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var a answer
	b, _ := io.ReadAll(resp.Body)
	if err := json.Unmarshal(b, &a); err != nil {
		t.Fatalf("answer %d %q: %v", resp.StatusCode, b, err)
	}
	return resp, a
}

// setup starts quotad and the chat service in front of it, with a
// service key as a product would hold.
func setup(t *testing.T, model chat.Model) (base string, admin *client.Client) {
	t.Helper()
	q := quotadtest.Start(t)
	admin = client.New(q.URL, quotadtest.AdminKey)
	key, err := admin.CreateKey(context.Background(), client.ScopeService, "chat")
	if err != nil {
		t.Fatal(err)
	}
	app := chat.New(chat.Config{
		Quota:  client.New(q.URL, key.Key),
		Model:  model,
		Tokens: map[string]string{"alice-token": "alice"},
	})
	srv := httptest.NewServer(app)
	t.Cleanup(srv.Close)
	t.Cleanup(app.CloseStreams)
	return srv.URL, admin
}

func credits(t *testing.T, admin *client.Client, subject string) quota.MeterStatus {
	t.Helper()
	v, err := admin.Subject(context.Background(), subject)
	if err != nil {
		t.Fatal(err)
	}
	return v.Meters[0]
}

func TestChat(t *testing.T) {
	base, admin := setup(t, nil)
	ctx := context.Background()

	t.Run("signed-in user is billed the priced usage", func(t *testing.T) {
		resp, a := send(t, http.DefaultClient, base, "How do I price tokens?", "Authorization: Bearer alice-token")
		if resp.StatusCode != 200 || a.Subject != "user:alice" || a.Reply == "" || a.Usage.Model != "claude-3-5-sonnet" || a.Usage.OutputTokens == 0 {
			t.Fatalf("%d: %+v", resp.StatusCode, a)
		}
		cost, err := admin.Cost(ctx, a.Usage)
		if err != nil {
			t.Fatal(err)
		}
		if a.Credits != cost.Credits || a.Remaining != 2500-cost.Credits {
			t.Errorf("charged %d, remaining %d; want %d and %d", a.Credits, a.Remaining, cost.Credits, 2500-cost.Credits)
		}
		if m := credits(t, admin, "user:alice"); m.Used != cost.Credits || m.Reserved != 0 {
			t.Errorf("quotad says used %d, reserved %d; want %d, 0", m.Used, m.Reserved, cost.Credits)
		}
	})

	t.Run("X-User from an authenticating proxy", func(t *testing.T) {
		resp, a := send(t, http.DefaultClient, base, "hi", "X-User: bob")
		if resp.StatusCode != 200 || a.Subject != "user:bob" {
			t.Errorf("%d: %+v", resp.StatusCode, a)
		}
	})

	t.Run("unknown token is a 401", func(t *testing.T) {
		resp, a := send(t, http.DefaultClient, base, "hi", "Authorization: Bearer stolen")
		if resp.StatusCode != 401 || resp.Header.Get("Content-Type") != "application/problem+json" {
			t.Errorf("%d: %+v", resp.StatusCode, a)
		}
	})

	t.Run("anonymous browser keeps its allowance through the cookie", func(t *testing.T) {
		jar, _ := cookiejar.New(nil)
		browser := &http.Client{Jar: jar}
		resp, first := send(t, browser, base, "hello")
		if resp.StatusCode != 200 || !strings.HasPrefix(first.Subject, "anon:") || resp.Header.Get("Set-Cookie") == "" {
			t.Fatalf("%d (Set-Cookie %q): %+v", resp.StatusCode, resp.Header.Get("Set-Cookie"), first)
		}
		resp, second := send(t, browser, base, "hello again")
		if resp.StatusCode != 200 || second.Subject != first.Subject {
			t.Fatalf("second message billed to %s; want %s", second.Subject, first.Subject)
		}
		if m := credits(t, admin, first.Subject); m.Limit != 1000 || m.Used != first.Credits+second.Credits {
			t.Errorf("quotad says %+v; want the anonymous plan, used %d", m, first.Credits+second.Credits)
		}
	})

	t.Run("out of credits is a 429 with what is left", func(t *testing.T) {
		_, a := send(t, http.DefaultClient, base, "hi", "X-Fingerprint: device-1")
		subject := a.Subject
		// Too little left for the next message's worst case (5
		// credits: its 8,000-token prompt and up to 1,024 tokens out).
		limits := map[string]quota.Limit{"credits": {Limit: a.Credits + 2, Period: quota.PeriodMonth}}
		if _, err := admin.PutSubject(ctx, subject, quota.SubjectUpdate{Limits: &limits}); err != nil {
			t.Fatal(err)
		}
		resp, refused := send(t, http.DefaultClient, base, "one more, please", "X-Fingerprint: device-1")
		if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Content-Type") != "application/problem+json" {
			t.Fatalf("%d: %+v; want 429", resp.StatusCode, refused)
		}
		if refused.Remaining != 2 || refused.Limit != a.Credits+2 || refused.Requested != 5 || refused.ResetsAt == "" {
			t.Errorf("429 says %+v", refused)
		}
		if ra, err := strconv.Atoi(resp.Header.Get("Retry-After")); err != nil || ra < 1 {
			t.Errorf("Retry-After %q", resp.Header.Get("Retry-After"))
		}
		if m := credits(t, admin, subject); m.Used != a.Credits || m.Reserved != 0 {
			t.Errorf("after the refusal: %+v", m)
		}
	})

	t.Run("page", func(t *testing.T) {
		resp, err := http.Get(base + "/")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(string(b), "EventSource") {
			t.Errorf("%d: %.100s", resp.StatusCode, b)
		}
	})
}

// TestModelDown: a model that fails charges nothing, and its hold is
// released at once rather than left to expire.
func TestModelDown(t *testing.T) {
	base, admin := setup(t, chat.FakeModel{Err: errors.New("provider overloaded")})
	resp, a := send(t, http.DefaultClient, base, "hi", "X-User: carol")
	if resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("%d: %+v; want 502", resp.StatusCode, a)
	}
	if m := credits(t, admin, "user:carol"); m.Used != 0 || m.Reserved != 0 {
		t.Errorf("after the failure: %+v; want nothing used or held", m)
	}
}
