package main_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"

	"github.com/quotad/quotad/internal/testenv"
)

// browser is a headless Chromium driven by chromedp that records every
// request the pages make and every error their JavaScript reports.
type browser struct {
	ctx  context.Context
	base string // http://addr

	mu       sync.Mutex
	requests []string
	errors   []string
	shots    string // screenshot folder
}

func newBrowser(t *testing.T, base string) *browser {
	t.Helper()
	exe := testenv.Chromium(t)
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(exe),
		chromedp.NoSandbox, // tests may run as root, where Chromium's sandbox refuses to start
		chromedp.WindowSize(1280, 900),
	)
	actx, cancelA := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelB := chromedp.NewContext(actx)
	t.Cleanup(func() { cancelB(); cancelA() })
	shots, err := os.MkdirTemp("", "quotad-console-shots-")
	if err != nil {
		t.Fatal(err)
	}
	b := &browser{ctx: ctx, base: base, shots: shots}
	chromedp.ListenTarget(ctx, func(ev any) {
		b.mu.Lock()
		defer b.mu.Unlock()
		switch ev := ev.(type) {
		case *network.EventRequestWillBeSent:
			b.requests = append(b.requests, ev.Request.URL)
		case *runtime.EventConsoleAPICalled:
			if ev.Type == runtime.APITypeError || ev.Type == runtime.APITypeAssert {
				var args []string
				for _, a := range ev.Args {
					args = append(args, string(a.Value)+a.Description)
				}
				b.errors = append(b.errors, "console."+string(ev.Type)+": "+strings.Join(args, " "))
			}
		case *runtime.EventExceptionThrown:
			b.errors = append(b.errors, "exception: "+ev.ExceptionDetails.Error())
		case *log.EventEntryAdded:
			// Network failures of pages left on purpose (a stream cut by
			// navigation) are not JavaScript errors.
			if ev.Entry.Level == log.LevelError && ev.Entry.Source != log.SourceNetwork {
				b.errors = append(b.errors, "log: "+ev.Entry.Text+" "+ev.Entry.URL)
			}
		case *page.EventJavascriptDialogOpening:
			// The console asks before a reset or a revoke: accept.
			go func() { _ = chromedp.Run(ctx, page.HandleJavaScriptDialog(true)) }()
		}
	})
	if err := chromedp.Run(ctx, network.Enable(), log.Enable(), runtime.Enable()); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	t.Logf("screenshots in %s", shots)
	return b
}

func (b *browser) run(t *testing.T, what string, actions ...chromedp.Action) {
	t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 20*time.Second)
	defer cancel()
	if err := chromedp.Run(ctx, actions...); err != nil {
		var body string
		_ = chromedp.Run(b.ctx, chromedp.OuterHTML("main", &body, chromedp.ByQuery))
		t.Fatalf("%s: %v\npage: %s", what, err, body)
	}
}

func (b *browser) text(t *testing.T, sel string) string {
	t.Helper()
	var s string
	b.run(t, "read "+sel, chromedp.Text(sel, &s, chromedp.ByQuery))
	return strings.TrimSpace(s)
}

// shot saves a full-page screenshot at the width of the window.
func (b *browser) shot(t *testing.T, name string) string {
	t.Helper()
	var png []byte
	b.run(t, "screenshot "+name, chromedp.FullScreenshot(&png, 100)) // 100: PNG; less is JPEG
	p := filepath.Join(b.shots, name+".png")
	if err := os.WriteFile(p, png, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// unlabelled lists the page's controls without a label a screen reader
// can announce.
const unlabelled = `[...document.querySelectorAll('input:not([type=hidden]), select, textarea, button')].filter(e =>
	e.tagName === 'BUTTON' ? !(e.textContent.trim() || e.getAttribute('aria-label'))
		: !((e.labels && e.labels.length) || e.getAttribute('aria-label'))).map(e => e.outerHTML)`

// shots2 saves the page at 1280 and at 390 px wide, and checks that each
// of its controls has a label and that nothing is wider than 390 px.
func (b *browser) shots2(t *testing.T, name string) {
	t.Helper()
	var bare []string
	b.run(t, "labels of "+name, chromedp.Evaluate(unlabelled, &bare))
	for _, e := range bare {
		t.Errorf("%s: a control without a label: %s", name, e)
	}
	b.shot(t, name+"-1280")
	b.run(t, "narrow", chromedp.EmulateViewport(390, 844))
	b.shot(t, name+"-390")
	var wide bool
	b.run(t, "width of "+name, chromedp.Evaluate(`document.documentElement.scrollWidth > 390`, &wide))
	if wide {
		var culprits []string
		_ = chromedp.Run(b.ctx, chromedp.Evaluate(`[...document.querySelectorAll('body *')].filter(e => e.getBoundingClientRect().right > 391).map(e => e.tagName + '.' + e.className + ' ' + Math.round(e.getBoundingClientRect().right)).slice(0, 8)`, &culprits))
		t.Errorf("%s is wider than 390 px: %v", name, culprits)
	}
	b.run(t, "wide", chromedp.EmulateViewport(1280, 900))
}

// waitText polls until sel's text is want, up to within.
func (b *browser) waitText(t *testing.T, sel, want string, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	var got string
	for {
		ctx, cancel := context.WithTimeout(b.ctx, time.Second)
		err := chromedp.Run(ctx, chromedp.Text(sel, &got, chromedp.ByQuery, chromedp.AtLeast(0)))
		cancel()
		if err == nil && strings.TrimSpace(got) == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %q after %v, want %q (err %v)", sel, got, within, want, err)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

func (b *browser) check(t *testing.T) {
	t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, e := range b.errors {
		t.Errorf("JavaScript error: %s", e)
	}
	for _, u := range b.requests {
		if !strings.HasPrefix(u, b.base+"/") && !strings.HasPrefix(u, "data:") {
			t.Errorf("a page requested %s, outside quotad", u)
		}
	}
	if len(b.requests) == 0 {
		t.Error("no request recorded")
	}
}

// TestConsole drives the admin console in headless Chromium against a
// real quotad, Redis and Postgres.
func TestConsole(t *testing.T) {
	q := startQuotad(t, "QUOTAD_POSTGRES_URL="+testenv.PostgresURL(t))
	base := "http://" + q.addr
	b := newBrowser(t, base)
	defer b.check(t)
	subject := "user:ada"

	// A wrong key is refused, and counted as a failed authentication.
	failedBefore := authFailures(t, q)
	b.run(t, "sign in with a wrong key",
		chromedp.Navigate(base+"/console/"),
		chromedp.WaitVisible("#key", chromedp.ByID),
		chromedp.SendKeys("#key", "not-a-key", chromedp.ByID),
		chromedp.Submit("#key", chromedp.ByID),
		chromedp.WaitVisible("#key-error", chromedp.ByID),
	)
	if got := b.text(t, "#key-error"); !strings.Contains(got, "does not know this key") {
		t.Errorf("wrong key: %q", got)
	}
	if after := authFailures(t, q); after != failedBefore+1 {
		t.Errorf("failed authentications %v → %v, want one more", failedBefore, after)
	}
	b.shots2(t, "signin-refused")

	b.run(t, "sign in",
		chromedp.SendKeys("#key", adminKey+kb.Enter, chromedp.ByID), // by keyboard
		chromedp.WaitVisible("#h-health", chromedp.ByID),
	)
	if got := b.text(t, "h1"); got != "Overview" {
		t.Fatalf("after sign-in: %q", got)
	}
	// This instance, from its flusher's heartbeat.
	b.run(t, "live instances", chromedp.WaitVisible(`#h-inst + .scroll td code`, chromedp.ByQuery))
	b.shots2(t, "overview")

	// Find a subject the API has used.
	if code, _ := q.call(t, "POST", "/v1/consume", `{"subject":"`+subject+`","amount":100}`); code != 200 {
		t.Fatalf("consume: %d", code)
	}
	if code, _ := q.call(t, "PUT", "/v1/subjects/"+subject, `{"limits":{"requests":{"limit":500,"period":"day"}}}`); code != 200 {
		t.Fatalf("override: %d", code)
	}
	// Find it by prefix in the listing, once flushed to Postgres (the
	// listing's source); a whole id opens the subject at once.
	link := `a[href="/console/subjects/` + subject + `"]`
	deadline := time.Now().Add(10 * time.Second)
	for {
		var n []*cdp.Node
		b.run(t, "search by prefix",
			chromedp.Navigate(base+"/console/subjects"),
			chromedp.WaitVisible("#prefix", chromedp.ByID),
			chromedp.SendKeys("#prefix", "user:a", chromedp.ByID),
			chromedp.SetValue("#order", "share", chromedp.ByID),
			chromedp.Click(`//button[text()="List"]`, chromedp.BySearch),
			// The listing's own page, not the one the form was sent from
			// (its table matches too, and a screenshot taken while the
			// browser navigates away can hang): the server writes the
			// prefix into the attribute, typing sets only the property.
			chromedp.WaitVisible(`#prefix[value="user:a"]`, chromedp.ByQuery),
			chromedp.WaitVisible("table", chromedp.ByQuery),
			chromedp.Nodes(link, &n, chromedp.ByQuery, chromedp.AtLeast(0)),
		)
		if len(n) > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not listed under its prefix", subject)
		}
		time.Sleep(200 * time.Millisecond)
	}
	b.shots2(t, "subjects")
	b.run(t, "open by id",
		chromedp.SetValue("#prefix", subject, chromedp.ByID),
		chromedp.Click(`button[name="go"]`, chromedp.ByQuery),
		chromedp.WaitVisible("#meters", chromedp.ByID),
	)
	if got := b.text(t, "h1"); got != subject {
		t.Fatalf("subject page of %q", got)
	}
	used := `li[data-meter="credits"] [data-f="used"]`
	limit := `li[data-meter="credits"] [data-f="limit"]`
	b.waitText(t, "#live", "live", 5*time.Second)
	b.waitText(t, used, "100", time.Second)

	// A consume through the API shows within 2 s, without a reload.
	b.run(t, "mark the page", chromedp.Evaluate(`window.notReloaded = true`, nil))
	if code, _ := q.call(t, "POST", "/v1/consume", `{"subject":"`+subject+`","amount":250}`); code != 200 {
		t.Fatalf("consume: %d", code)
	}
	b.waitText(t, used, "350", 2*time.Second)
	if code, _ := q.call(t, "POST", "/v1/reservations", `{"subject":"`+subject+`","amount":300,"ttl_seconds":600}`); code != 201 {
		t.Fatalf("reserve: %d", code)
	}
	b.waitText(t, `li[data-meter="credits"] [data-f="reserved"]`, "300", 2*time.Second)
	if code, _ := q.call(t, "POST", "/v1/consume", `{"subject":"`+subject+`","meter":"requests","amount":120}`); code != 200 {
		t.Fatalf("consume requests: %d", code)
	}
	b.waitText(t, `li[data-meter="requests"] [data-f="used"]`, "120", 2*time.Second)
	var same bool
	b.run(t, "check no reload", chromedp.Evaluate(`window.notReloaded === true`, &same))
	if !same {
		t.Error("the page reloaded to show the consume")
	}
	b.shots2(t, "subject")
	if p := os.Getenv("CONSOLE_DOCS_SHOT"); p != "" {
		// The README's picture: CONSOLE_DOCS_SHOT=$PWD/docs/console-subject.png
		// go test -run TestConsole ./cmd/quotad
		var png []byte
		b.run(t, "docs screenshot", chromedp.EmulateViewport(1000, 560), chromedp.CaptureScreenshot(&png), chromedp.EmulateViewport(1280, 900))
		if err := os.WriteFile(p, png, 0o644); err != nil {
			t.Fatal(err)
		}
	}

	// Change the plan: the new limit shows.
	b.run(t, "change the plan",
		chromedp.SetValue("#plan-select", "pro", chromedp.ByID),
		chromedp.Click(`//button[text()="Change plan"]`, chromedp.BySearch),
		chromedp.WaitVisible(".flash", chromedp.ByQuery),
	)
	b.waitText(t, limit, "10,000", 2*time.Second)
	if got := b.text(t, "#plan"); got != "pro" {
		t.Errorf("plan shown %q", got)
	}
	if _, v := q.call(t, "GET", "/v1/subjects/"+subject, ""); v["plan"] != "pro" {
		t.Errorf("API says plan %v", v["plan"])
	}

	// Reset (the page asks first; the browser accepts).
	b.run(t, "reset", chromedp.Click(`//button[contains(text(),"Reset usage")]`, chromedp.BySearch))
	b.waitText(t, ".flash", "Usage reset.", 5*time.Second)
	b.waitText(t, used, "0", 2*time.Second)

	// Plans and pricing pages.
	b.run(t, "plans", chromedp.Navigate(base+"/console/plans"), chromedp.WaitVisible("#pl-name", chromedp.ByID))
	b.run(t, "a refused plan",
		chromedp.SendKeys("#pl-name", "console-plan", chromedp.ByID),
		chromedp.SetValue("#pl-limit", "-5", chromedp.ByID),
		chromedp.Click(`//button[text()="Save plan"]`, chromedp.BySearch),
		chromedp.WaitVisible("#pl-limit-error", chromedp.ByID),
	)
	b.shots2(t, "plans")
	b.run(t, "pricing", chromedp.Navigate(base+"/console/pricing"), chromedp.WaitVisible("#pr-model", chromedp.ByID))
	b.shots2(t, "pricing")

	// Create a key: its secret once; revoke it: the API refuses it at once.
	b.run(t, "create a key",
		chromedp.Navigate(base+"/console/keys"),
		chromedp.WaitVisible("#k-name", chromedp.ByID),
		chromedp.SendKeys("#k-name", "console test", chromedp.ByID),
		chromedp.Click(`//button[text()="Mint key"]`, chromedp.BySearch),
		chromedp.WaitVisible("#secret", chromedp.ByID),
	)
	var secret string
	b.run(t, "read the secret", chromedp.Value("#secret", &secret, chromedp.ByID))
	b.shots2(t, "keys-created")
	if code, _ := checkWith(t, q, secret); code != 200 {
		t.Fatalf("the new key: %d", code)
	}
	var html string
	b.run(t, "keys again", chromedp.Navigate(base+"/console/keys"), chromedp.WaitVisible("#k-name", chromedp.ByID),
		chromedp.OuterHTML("html", &html, chromedp.ByQuery))
	if strings.Contains(html, secret) {
		t.Error("the key's secret is shown again")
	}
	var ids []*cdp.Node
	b.run(t, "find the revoke button", chromedp.Nodes(`button[aria-label^="Revoke key"]`, &ids, chromedp.ByQueryAll))
	if len(ids) != 1 {
		t.Fatalf("%d keys listed, want 1", len(ids))
	}
	b.run(t, "revoke", chromedp.Click(`button[aria-label^="Revoke key"]`, chromedp.ByQuery), chromedp.WaitVisible(".flash", chromedp.ByQuery))
	if code, _ := checkWith(t, q, secret); code != 401 {
		t.Errorf("the revoked key: %d, want 401", code)
	}

	// A form posted without its CSRF token is refused, and changes nothing.
	var cookies []*network.Cookie
	b.run(t, "cookies", chromedp.ActionFunc(func(ctx context.Context) error {
		var err error
		cookies, err = network.GetCookies().WithURLs([]string{base + "/console/"}).Do(ctx)
		return err
	}))
	var session string
	for _, c := range cookies {
		if c.Name == "quotad_console" {
			session = c.Value
			if !c.HTTPOnly || c.SameSite != network.CookieSameSiteStrict {
				t.Errorf("session cookie %+v: want HttpOnly, SameSite=Strict", c)
			}
		}
	}
	if code, _ := q.call(t, "POST", "/v1/consume", `{"subject":"`+subject+`","amount":7}`); code != 200 {
		t.Fatalf("consume: %d", code)
	}
	for _, form := range []url.Values{{}, {"csrf": {"forged"}}} {
		req, _ := http.NewRequest("POST", base+"/console/subjects/"+subject+"/reset", strings.NewReader(form.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.AddCookie(&http.Cookie{Name: "quotad_console", Value: session})
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden || !strings.Contains(string(body), "CSRF") {
			t.Errorf("reset with csrf %q: %d %s", form.Get("csrf"), resp.StatusCode, body)
		}
	}
	if _, v := q.call(t, "GET", "/v1/subjects/"+subject, ""); fmt.Sprint(v["meters"].([]any)[0].(map[string]any)["used"]) != "7" {
		t.Errorf("after forged resets: %v", v["meters"])
	}

	// Sign out: the session no longer opens pages.
	b.run(t, "sign out", chromedp.Navigate(base+"/console/overview"), chromedp.WaitVisible("#h-health", chromedp.ByID),
		chromedp.Click(`//button[text()="Sign out"]`, chromedp.BySearch), chromedp.WaitVisible("#key", chromedp.ByID))
	req, _ := http.NewRequest("GET", base+"/console/overview", nil)
	req.AddCookie(&http.Cookie{Name: "quotad_console", Value: session})
	resp, err := (&http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusSeeOther {
		t.Errorf("overview after sign-out: %d", resp.StatusCode)
	}
}

// authFailures reads quotad_auth_failures_total{reason="unknown"}.
func authFailures(t *testing.T, q *quotad) float64 {
	t.Helper()
	resp, err := http.Get("http://" + q.addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, `quotad_auth_failures_total{reason="unknown"}`) {
			var v float64
			fmt.Sscan(strings.Fields(line)[1], &v)
			return v
		}
	}
	return 0
}

// checkWith makes a check with key and returns the status and answer.
func checkWith(t *testing.T, q *quotad, key string) (int, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest("POST", "http://"+q.addr+"/v1/check", strings.NewReader(`{"subject":"user:console-2"}`))
	req.Header.Set("Authorization", "Bearer "+key)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var v map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&v)
	return resp.StatusCode, v
}
