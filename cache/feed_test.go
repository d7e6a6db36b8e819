package cache_test

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/quotad/quotad/cache"
	"github.com/quotad/quotad/internal/testenv"
	"github.com/quotad/quotad/quota"
)

// feedPoll is the tests' Poll: short, so that watches begin and lapse
// quickly.
const feedPoll = 50 * time.Millisecond

// feeds returns n Feeds on one Redis database, each with its own client,
// as n quotad instances would have them.
func feeds(tb testing.TB, n int, cfg cache.FeedConfig) []*cache.Feed {
	tb.Helper()
	url := testenv.RedisURL(tb)
	if cfg.Poll == 0 {
		cfg.Poll = feedPoll
	}
	out := make([]*cache.Feed, n)
	for i := range out {
		out[i] = newFeed(tb, url, cfg)
	}
	return out
}

func newFeed(tb testing.TB, url string, cfg cache.FeedConfig) *cache.Feed {
	tb.Helper()
	opt, err := redis.ParseURL(url)
	if err != nil {
		tb.Fatal(err)
	}
	rdb := redis.NewClient(opt)
	ctx, cancel := context.WithCancel(context.Background())
	tb.Cleanup(func() {
		cancel()
		rdb.Close()
	})
	f := cache.NewFeed(ctx, rdb, cfg, discard)
	f.Register(prometheus.NewRegistry())
	return f
}

func subscribe(tb testing.TB, f *cache.Feed, subject, last string) *cache.Subscription {
	tb.Helper()
	s, err := f.Subscribe(context.Background(), subject, last)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(s.Close)
	return s
}

// change is a usage change of subject whose Used is n, so that tests can
// tell changes apart and check their order.
func change(subject string, n int64) quota.Change {
	return quota.Change{Type: quota.ChangeUsage, Action: "consumed", Subject: subject, Meter: "credits", Amount: 1, Used: n, Limit: 1000}
}

// next waits for the next item of s.
func next(tb testing.TB, s *cache.Subscription) cache.Item {
	tb.Helper()
	deadline := time.After(5 * time.Second)
	for {
		if it, ok := s.Next(); ok {
			return it
		}
		select {
		case <-s.Ready():
		case <-deadline:
			tb.Fatal("no item within 5 s")
		}
	}
}

// nextChange waits for the next item of s and decodes its change.
func nextChange(tb testing.TB, s *cache.Subscription) (cache.Item, quota.Change) {
	tb.Helper()
	it := next(tb, s)
	if it.Missed || it.Overflow {
		tb.Fatalf("item %+v, want a change", it)
	}
	var c quota.Change
	if err := json.Unmarshal(it.Data, &c); err != nil {
		tb.Fatal(err)
	}
	if c.Type != it.Type || c.Subject != it.Subject || it.ID == "" {
		tb.Fatalf("item %+v does not match its change %+v", it, c)
	}
	return it, c
}

// none checks that s delivers nothing more within d.
func none(tb testing.TB, s *cache.Subscription, d time.Duration) {
	tb.Helper()
	time.Sleep(d)
	if it, ok := s.Next(); ok {
		tb.Fatalf("unexpected item %+v (%s)", it, it.Data)
	}
}

// TestFeedAcrossInstances: a change notified on one instance reaches a
// subscriber on another as soon as Subscribe has returned (the watch has
// reached every instance by then), with its stream id.
func TestFeedAcrossInstances(t *testing.T) {
	f := feeds(t, 2, cache.FeedConfig{})
	a, b := f[0], f[1]
	s := subscribe(t, b, "user:1", "")
	if s.Replayed() {
		t.Fatal("replayed without a last event id")
	}
	a.Notify(change("user:1", 7))
	it, c := nextChange(t, s)
	if c.Used != 7 || c.Subject != "user:1" || c.Type != quota.ChangeUsage {
		t.Fatalf("got %+v", c)
	}
	a.Notify(change("user:1", 8))
	it2, c := nextChange(t, s)
	if c.Used != 8 || !idLess(it.ID, it2.ID) {
		t.Fatalf("second change %+v id %s after %s", c, it2.ID, it.ID)
	}
}

// TestFeedSubjectFilter: a subject's subscription sees that subject's
// changes only; an all-subjects one sees every change, in one order.
func TestFeedSubjectFilter(t *testing.T) {
	f := feeds(t, 2, cache.FeedConfig{})
	sa := subscribe(t, f[1], "user:a", "")
	sb := subscribe(t, f[1], "anon:b", "")
	all := subscribe(t, f[0], "", "")
	for i := range int64(10) {
		subject := "user:a"
		if i%3 == 0 {
			subject = "anon:b"
		}
		f[i%2].Notify(change(subject, i))
	}
	var gotAll []string
	for range 10 {
		it, c := nextChange(t, all)
		gotAll = append(gotAll, fmt.Sprint(c.Subject, "/", c.Used, "@", it.ID))
	}
	for _, tc := range []struct {
		name string
		s    *cache.Subscription
		want []int64
	}{
		{"user:a", sa, []int64{1, 2, 4, 5, 7, 8}},
		{"anon:b", sb, []int64{0, 3, 6, 9}},
	} {
		var got []int64
		for range tc.want {
			_, c := nextChange(t, tc.s)
			if c.Subject != tc.name {
				t.Fatalf("%s got a change of %s", tc.name, c.Subject)
			}
			got = append(got, c.Used)
		}
		// Notify from two instances races, so compare as sets; the order
		// within one subscription is the stream's.
		if fmt.Sprint(sorted(got)) != fmt.Sprint(tc.want) {
			t.Fatalf("%s got %v, want %v (all: %v)", tc.name, got, tc.want, gotAll)
		}
		none(t, tc.s, 3*feedPoll)
	}
}

func sorted(v []int64) []int64 {
	out := append([]int64(nil), v...)
	for i := range out {
		for j := i + 1; j < len(out); j++ {
			if out[j] < out[i] {
				out[i], out[j] = out[j], out[i]
			}
		}
	}
	return out
}

// TestFeedReplay: a subscriber that comes back with the id of the last
// change it saw gets every change after it, then live ones, with no gap
// and no duplicate at the seam, while changes keep coming.
func TestFeedReplay(t *testing.T) {
	f := feeds(t, 2, cache.FeedConfig{})
	a, b := f[0], f[1]
	keep := subscribe(t, a, "user:keep", "") // keeps the watch alive meanwhile

	s, err := b.Subscribe(context.Background(), "user:r", "")
	if err != nil {
		t.Fatal(err)
	}
	for i := range int64(5) {
		a.Notify(change("user:r", i))
	}
	var last string
	for i := range int64(5) {
		it, c := nextChange(t, s)
		if c.Used != i {
			t.Fatalf("change %d: used %d", i, c.Used)
		}
		last = it.ID
	}
	s.Close()

	// Changes go on while the subscriber is away and while it comes back.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := int64(5); ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			a.Notify(change("user:r", i))
			a.Notify(change("user:other", i))
			time.Sleep(200 * time.Microsecond)
		}
	})
	time.Sleep(20 * time.Millisecond)
	s = subscribe(t, b, "user:r", last)
	time.Sleep(20 * time.Millisecond)
	close(stop)
	wg.Wait()
	if !s.Replayed() {
		t.Fatal("not replayed")
	}
	want := int64(5)
	prev := last
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		it, ok := s.Next()
		if !ok {
			select {
			case <-s.Ready():
			case <-time.After(10 * feedPoll):
			}
			continue
		}
		var c quota.Change
		if it.Missed || it.Overflow || json.Unmarshal(it.Data, &c) != nil {
			t.Fatalf("item %+v", it)
		}
		if c.Used != want || !idLess(prev, it.ID) {
			t.Fatalf("after used %d (id %s): got used %d (id %s)", want-1, prev, c.Used, it.ID)
		}
		want++
		prev = it.ID
	}
	if want < 20 {
		t.Fatalf("only %d changes after the replay point", want-5)
	}
	t.Logf("%d changes replayed and live, in order", want-5)
	keep.Close()
}

// idLess reports whether stream id a comes before b.
func idLess(a, b string) bool {
	var am, as, bm, bs uint64
	fmt.Sscanf(a, "%d-%d", &am, &as)
	fmt.Sscanf(b, "%d-%d", &bm, &bs)
	return am < bm || am == bm && as < bs
}

// TestFeedNoReplay: an id the stream cannot replay from (trimmed after
// it, malformed, never given, or from before a pause in publishing) is
// reported as such.
func TestFeedNoReplay(t *testing.T) {
	url := testenv.RedisURL(t)
	a := newFeed(t, url, cache.FeedConfig{Poll: feedPoll})
	b := newFeed(t, url, cache.FeedConfig{Poll: feedPoll})
	var open []*cache.Subscription
	sub := func(last string) *cache.Subscription {
		s := subscribe(t, b, "user:n", last)
		open = append(open, s)
		return s
	}
	s := sub("")
	for i := range int64(3) {
		a.Notify(change("user:n", i))
	}
	var ids []string
	for range 3 {
		it, _ := nextChange(t, s)
		ids = append(ids, it.ID)
	}
	r := sub(ids[0])
	if !r.Replayed() {
		t.Fatal("a recent id was not replayed")
	}
	for i := 1; i < 3; i++ {
		if it, _ := nextChange(t, r); it.ID != ids[i] {
			t.Fatalf("replayed %s, want %s", it.ID, ids[i])
		}
	}

	opt, _ := redis.ParseURL(url)
	rdb := redis.NewClient(opt)
	defer rdb.Close()
	// Trim what History would have: the entries before the last one.
	if err := rdb.XTrimMinID(context.Background(), cache.EventsStream, ids[2]).Err(); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ name, id string }{
		{"trimmed after it", ids[0]},
		{"malformed", "yesterday"},
		{"not a stream id", "12-x"},
		{"from the future", "99999999999999-0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if r := sub(tc.id); r.Replayed() {
				t.Fatalf("replayed from %q", tc.id)
			}
		})
	}
	if r := sub(ids[2]); !r.Replayed() {
		t.Fatal("the last entry's id was not replayed")
	}

	t.Run("after a pause in publishing", func(t *testing.T) {
		for _, s := range open {
			s.Close()
		}
		// Nobody watches: the watch lapses and changes go unpublished.
		waitUnwatched(t, rdb)
		time.Sleep(3 * feedPoll)
		a.Notify(change("user:n", 100))
		if r := sub(ids[2]); r.Replayed() {
			t.Fatal("replayed across a pause in publishing")
		}
	})
}

func waitUnwatched(tb testing.TB, rdb *redis.Client) {
	tb.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		n, err := rdb.Exists(context.Background(), cache.WatchersKey).Result()
		if err != nil {
			tb.Fatal(err)
		}
		if n == 0 {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatal("the watch did not lapse")
		}
		time.Sleep(feedPoll / 2)
	}
}

// TestFeedLookback: a subject's subscription without a replay begins with
// the subject's changes of the last Lookback (what a snapshot read from a
// cache may lack), then goes on live with none twice.
func TestFeedLookback(t *testing.T) {
	url := testenv.RedisURL(t)
	a := newFeed(t, url, cache.FeedConfig{Poll: feedPoll})
	b := newFeed(t, url, cache.FeedConfig{Poll: feedPoll, Lookback: time.Second})
	keep := subscribe(t, a, "user:keep", "")
	a.Notify(change("user:old", 1))
	a.Notify(change("user:l", 1))
	time.Sleep(1500 * time.Millisecond) // older than Lookback by now
	a.Notify(change("user:l", 2))
	a.Notify(change("user:other", 2))
	a.Notify(change("user:l", 3))
	time.Sleep(100 * time.Millisecond) // published before the subscription
	s := subscribe(t, b, "user:l", "")
	if s.Replayed() {
		t.Fatal("a lookback is not a replay")
	}
	a.Notify(change("user:l", 4))
	for _, want := range []int64{2, 3, 4} {
		if _, c := nextChange(t, s); c.Used != want || c.Subject != "user:l" {
			t.Fatalf("got %+v, want used %d", c, want)
		}
	}
	none(t, s, 3*feedPoll)
	// Every subject: no lookback (there is no snapshot to bring up to date).
	all := subscribe(t, b, "", "")
	a.Notify(change("user:l", 5))
	if _, c := nextChange(t, all); c.Used != 5 {
		t.Fatalf("every subject: got %+v first, want used 5", c)
	}
	keep.Close()
}

// TestFeedSlowSubscriber: a subscriber that never reads is cut off with
// a final Overflow item once its buffer is full, while another on the
// same instance gets every change and Notify never blocks.
func TestFeedSlowSubscriber(t *testing.T) {
	const buffer = 16
	f := feeds(t, 2, cache.FeedConfig{Buffer: buffer})
	a, b := f[0], f[1]
	slow := subscribe(t, b, "user:s", "")
	fast := subscribe(t, b, "user:s", "")
	for i := range int64(100) {
		a.Notify(change("user:s", i))
		if _, c := nextChange(t, fast); c.Used != i {
			t.Fatalf("fast subscriber: used %d, want %d", c.Used, i)
		}
	}
	select {
	case <-slow.Done():
	default:
		t.Fatal("the slow subscriber was not cut off")
	}
	for i := range int64(buffer) {
		if _, c := nextChange(t, slow); c.Used != i {
			t.Fatalf("slow subscriber: used %d, want %d", c.Used, i)
		}
	}
	if it := next(t, slow); !it.Overflow {
		t.Fatalf("last item %+v, want Overflow", it)
	}
	if it, ok := slow.Next(); ok {
		t.Fatalf("item %+v after Overflow", it)
	}
}

// TestFeedNotifyNeverBlocks: with the queue full, Notify drops (and
// counts) instead of waiting, and subscribers are told they missed
// changes.
func TestFeedNotifyNeverBlocks(t *testing.T) {
	url := testenv.RedisURL(t)
	opt, _ := redis.ParseURL(url)
	rdb := redis.NewClient(opt)
	defer rdb.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	a := cache.NewFeed(ctx, rdb, cache.FeedConfig{Poll: feedPoll, Queue: 4}, discard)
	reg := prometheus.NewRegistry()
	a.Register(reg)
	b := newFeed(t, url, cache.FeedConfig{Poll: feedPoll, Buffer: 100_000})
	s := subscribe(t, b, "", "")

	const n = 200_000
	start := time.Now()
	for i := range int64(n) {
		a.Notify(change("user:q", i))
	}
	took := time.Since(start)
	dropped := metric(t, reg, "quotad_events_dropped_total")
	t.Logf("%d Notify calls in %v (%v each), %v dropped", n, took, took/n, dropped)
	if dropped == 0 {
		t.Fatal("nothing dropped with a queue of 4")
	}
	if took > 2*time.Second {
		t.Fatalf("Notify took %v for %d changes", took, n)
	}
	a.Notify(change("user:q", n)) // carries the gap entry, once the queue has room
	deadline := time.After(10 * time.Second)
	for {
		it := next(t, s)
		if it.Missed {
			if it.ID == "" {
				t.Fatal("the gap came from the reader, not the stream")
			}
			return
		}
		select {
		case <-deadline:
			t.Fatal("no Missed item after dropped changes")
		default:
		}
	}
}

// metric returns the value of the counter name on reg.
func metric(tb testing.TB, reg *prometheus.Registry, name string) float64 {
	tb.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		tb.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	tb.Fatalf("no metric %s", name)
	return 0
}

// TestFeedNoPublishWithoutWatchers: Notify writes nothing while no
// instance has a subscriber, starts once one has, and stops again after
// the last one has gone.
func TestFeedNoPublishWithoutWatchers(t *testing.T) {
	url := testenv.RedisURL(t)
	opt, _ := redis.ParseURL(url)
	rdb := redis.NewClient(opt)
	defer rdb.Close()
	ctx := context.Background()
	a := newFeed(t, url, cache.FeedConfig{Poll: feedPoll})
	b := newFeed(t, url, cache.FeedConfig{Poll: feedPoll})
	xlen := func() int64 {
		n, err := rdb.XLen(ctx, cache.EventsStream).Result()
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	for i := range int64(100) {
		a.Notify(change("user:w", i))
	}
	time.Sleep(4 * feedPoll)
	if n := xlen(); n != 0 {
		t.Fatalf("%d entries published with nobody watching", n)
	}

	s, err := b.Subscribe(ctx, "user:w", "")
	if err != nil {
		t.Fatal(err)
	}
	a.Notify(change("user:w", 1))
	if _, c := nextChange(t, s); c.Used != 1 {
		t.Fatalf("got %+v", c)
	}
	s.Close()
	waitUnwatched(t, rdb)
	time.Sleep(2 * feedPoll) // every Feed has read the key since
	before := xlen()
	for i := range int64(100) {
		a.Notify(change("user:w", i))
	}
	time.Sleep(4 * feedPoll)
	if n := xlen(); n != before {
		t.Fatalf("%d entries published after the last subscriber left", n-before)
	}
}

// TestFeedDisconnect: Disconnect ends every subscription (without an
// Overflow item) and refuses new ones.
func TestFeedDisconnect(t *testing.T) {
	f := feeds(t, 1, cache.FeedConfig{})
	s := subscribe(t, f[0], "", "")
	f[0].Disconnect()
	select {
	case <-s.Done():
	case <-time.After(time.Second):
		t.Fatal("subscription not ended")
	}
	if it, ok := s.Next(); ok {
		t.Fatalf("item %+v after Disconnect", it)
	}
	if _, err := f[0].Subscribe(context.Background(), "", ""); err == nil {
		t.Fatal("Subscribe after Disconnect succeeded")
	}
}

// BenchmarkFeedNotify is Notify's cost on the request path: with nobody
// watching (one atomic load), and while watched (a channel send; the
// publisher drains the queue meanwhile).
func BenchmarkFeedNotify(b *testing.B) {
	c := change("user:bench", 1)
	b.Run("unwatched", func(b *testing.B) {
		f := feeds(b, 1, cache.FeedConfig{})[0]
		b.ReportAllocs()
		for b.Loop() {
			f.Notify(c)
		}
	})
	b.Run("watched", func(b *testing.B) {
		f := feeds(b, 1, cache.FeedConfig{})[0]
		subscribe(b, f, "user:other", "")
		b.ReportAllocs()
		for b.Loop() {
			f.Notify(c)
		}
	})
}
