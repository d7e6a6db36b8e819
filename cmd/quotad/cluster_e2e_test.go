package main_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/quotad/quotad/cache"
	"github.com/quotad/quotad/internal/testenv"
)

// onEachRedis runs test against one Redis and against a Redis Cluster of
// three masters with a replica each, each a subtest with its own Redis.
func onEachRedis(t *testing.T, test func(t *testing.T, redisURL string)) {
	t.Run("one", func(t *testing.T) { test(t, testenv.RedisURL(t)) })
	t.Run("cluster", func(t *testing.T) { test(t, testenv.StartRedisCluster(t, testenv.RedisOptions{}).URL()) })
}

// layoutOf is the key layout quotad uses by default on the Redis of url.
func layoutOf(url string) cache.Layout {
	if strings.Contains(url, "addr=") {
		return cache.NewLayout(cache.DefaultClusterBuckets)
	}
	return cache.Layout{}
}

// dialRedis returns a client of the Redis (or cluster) of url, closed at
// cleanup.
func dialRedis(tb testing.TB, url string) redis.UniversalClient {
	tb.Helper()
	rdb, _, _, err := cache.Dial(url, cache.Timeouts{Dial: time.Second, Read: 3 * time.Second, Write: 3 * time.Second, Pool: 4 * time.Second, PoolSize: 4})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { rdb.Close() })
	return rdb
}

// pendingEntries counts the entries of every pending stream of the Redis
// of url: usage not yet acknowledged by a flush.
func pendingEntries(tb testing.TB, url string) int64 {
	tb.Helper()
	rdb := dialRedis(tb, url)
	var n int64
	for _, s := range layoutOf(url).Streams() {
		l, err := rdb.XLen(context.Background(), s).Result()
		if err != nil {
			tb.Fatalf("xlen %s: %v", s, err)
		}
		n += l
	}
	return n
}

// TestClusterSpreadsSubjects: on a cluster, subjects' events go to the
// streams of every master, and a subject's keys share its stream's slot
// (Redis's own CLUSTER KEYSLOT says so).
func TestClusterSpreadsSubjects(t *testing.T) {
	c := testenv.StartRedisCluster(t, testenv.RedisOptions{})
	q := startQuotad(t, "QUOTAD_REDIS_URL="+c.URL())
	for i := range 48 {
		consume(t, q, fmt.Sprintf("user:spread-%d", i), 1)
	}
	rdb := dialRedis(t, c.URL())
	ctx := context.Background()
	layout := layoutOf(c.URL())
	perMaster := map[string]int64{}
	for _, s := range layout.Streams() {
		n, err := rdb.XLen(ctx, s).Result()
		if err != nil {
			t.Fatal(err)
		}
		slot, err := rdb.ClusterKeySlot(ctx, s).Result()
		if err != nil {
			t.Fatal(err)
		}
		perMaster[masterOf(t, c, int(slot))] += n
	}
	t.Logf("unflushed entries per master: %v", perMaster)
	if len(perMaster) != testenv.ClusterMasters {
		t.Fatalf("the streams are on %d masters, want all %d", len(perMaster), testenv.ClusterMasters)
	}
	// Every key of one subject is in the slot of its stream.
	sub := "user:spread-7"
	var mu sync.Mutex
	var keys []string
	err := rdb.(*redis.ClusterClient).ForEachMaster(ctx, func(ctx context.Context, node *redis.Client) error {
		k, err := node.Keys(ctx, layout.SubjectPrefix(sub)+"*").Result()
		mu.Lock()
		keys = append(keys, k...)
		mu.Unlock()
		return err
	})
	if err != nil || len(keys) == 0 {
		t.Fatalf("keys of %s: %v %v", sub, keys, err)
	}
	var slots []int64
	for _, k := range keys {
		slot, err := rdb.ClusterKeySlot(ctx, k).Result()
		if err != nil {
			t.Fatal(err)
		}
		slots = append(slots, slot)
	}
	for _, s := range layout.Streams() {
		slot, _ := rdb.ClusterKeySlot(ctx, s).Result()
		if slot == slots[0] {
			slots = append(slots, -1) // found
		}
	}
	sort.Slice(slots, func(i, j int) bool { return slots[i] < slots[j] })
	if slots[0] != -1 || slots[1] != slots[len(slots)-1] {
		t.Fatalf("slots of %s's keys %v: want one, the slot of a pending stream", sub, slots)
	}
}

// masterOf names the master of c that serves slot: the masters split the
// slots evenly, in order.
func masterOf(tb testing.TB, c *testenv.RedisCluster, slot int) string {
	tb.Helper()
	return c.Masters[slot*testenv.ClusterMasters/16384].Addr()
}

// TestClusterFailover kills a master of the cluster under a keyed load
// with QUOTAD_REDIS_WAIT_REPLICAS=1: its replica takes over, quotad
// follows it without a restart, the dead master comes back as the new
// master's replica, and once the client has retried what was not
// acknowledged (with its keys), Postgres and quotad hold every consume
// exactly once. The window of failures is logged.
func TestClusterFailover(t *testing.T) {
	c := testenv.StartRedisCluster(t, testenv.RedisOptions{})
	pg := testenv.PostgresURL(t)
	q := startQuotad(t, "QUOTAD_POSTGRES_URL="+pg, "QUOTAD_REDIS_URL="+c.URL(), "QUOTAD_REDIS_WAIT_REPLICAS=1", "QUOTAD_FLUSH_CLAIM_IDLE=1s")
	var subjects []string
	for i := range 24 {
		subjects = append(subjects, fmt.Sprintf("user:failover-%d", i))
	}
	stop := make(chan struct{})
	lr := drive(func() *quotad { return q }, subjects, 16, stop, false)
	time.Sleep(1500 * time.Millisecond)
	killed := time.Now()
	c.Masters[1].Kill(t)
	// The promoted replica has no replica of its own, so no write of its
	// slots can be confirmed until the dead master is back, as its
	// replica: as an operator replaces a dead node.
	time.Sleep(6 * time.Second)
	c.Masters[1].Start(t)
	back := redis.NewClient(&redis.Options{Addr: c.Masters[1].Addr()})
	defer back.Close()
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		info, _ := back.Info(context.Background(), "replication").Result()
		if strings.Contains(info, "role:slave") && strings.Contains(info, "master_link_status:up") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the restarted master did not become a replica in sync: %s", info)
		}
	}
	time.Sleep(3 * time.Second) // serving again, WAIT confirmed
	close(stop)
	<-lr.done
	settleLoad(t, q, pg, c.URL(), subjects, lr, "the kill", killed)
}

// settleLoad checks a keyed load (drive) that ran through a change of the
// cluster at at: it ran on both sides of it, quotad served again after
// its last failure, and once the client has retried what was not
// acknowledged (with its keys), Postgres and quotad hold every consume
// exactly once and nothing is left pending. The window of failures is
// logged.
func settleLoad(t *testing.T, q *quotad, pg, redisURL string, subjects []string, lr *loadResult, change string, at time.Time) {
	t.Helper()
	lr.mu.Lock()
	defer lr.mu.Unlock()
	want := map[string]int64{}
	acked, before := 0, 0
	var firstFail, lastFail time.Time
	for i, body := range lr.bodies {
		want[subjectOf(body)] += lr.amount[i]
		if lr.ended[i].Before(at) {
			before++
		}
		if lr.acked[i] {
			acked++
			continue
		}
		if firstFail.IsZero() {
			firstFail = lr.ended[i]
		}
		lastFail = lr.ended[i]
	}
	t.Logf("%d consumes before %s, %d after; %d acknowledged, %d not (503 or cut off)", before, change, len(lr.bodies)-before, acked, len(lr.bodies)-acked)
	if !firstFail.IsZero() {
		t.Logf("failures from %s to %s after %s", firstFail.Sub(at).Round(time.Millisecond), lastFail.Sub(at).Round(time.Millisecond), change)
	}
	if before < 100 || len(lr.bodies)-before < 100 {
		t.Fatalf("the load did not run on both sides of %s (%d before, %d in all)", change, before, len(lr.bodies))
	}
	// The last consumes were served after the change: quotad follows the
	// cluster without a restart.
	served := 0
	for i := range lr.bodies {
		if lr.acked[i] && lr.ended[i].After(lastFail) && lr.ended[i].After(at) {
			served++
		}
	}
	if served < 50 {
		t.Fatalf("%d consumes acknowledged after the last failure: quotad did not serve again after %s\n%s", served, change, q.out)
	}
	for i, body := range lr.bodies {
		if lr.acked[i] {
			continue
		}
		r, status, ok := q.consume(body)
		if !ok || r.Amount != lr.amount[i] {
			t.Fatalf("retry %s: status %d, %+v", body, status, r)
		}
	}
	for _, s := range subjects {
		waitFlushed(t, pg, s, want[s])
		if got := q.used(t, s); got != want[s] {
			t.Fatalf("%s: quotad says used %d, want %d", s, got, want[s])
		}
	}
	if n := pendingEntries(t, redisURL); n != 0 {
		t.Fatalf("%d entries still pending after every subject flushed", n)
	}
}

// TestClusterReshard moves the slots of busy buckets from one master to
// another under a keyed load, as adding a shard does: quotad follows the
// slots without a restart (through the ASK, TRYAGAIN and MOVED replies of
// the move), the buckets' streams move with their unacknowledged entries,
// and once the client has retried what was not acknowledged, Postgres and
// quotad hold every consume exactly once. It runs without WAIT and with
// QUOTAD_REDIS_WAIT_REPLICAS=1 (the moved keys reach the new master's
// replica too).
func TestClusterReshard(t *testing.T) {
	for _, wait := range []string{"0", "1"} {
		t.Run("wait"+wait, func(t *testing.T) { testReshard(t, wait) })
	}
}

func testReshard(t *testing.T, waitReplicas string) {
	c := testenv.StartRedisCluster(t, testenv.RedisOptions{})
	pg := testenv.PostgresURL(t)
	q := startQuotad(t, "QUOTAD_POSTGRES_URL="+pg, "QUOTAD_REDIS_URL="+c.URL(), "QUOTAD_FLUSH_CLAIM_IDLE=1s", "QUOTAD_REDIS_WAIT_REPLICAS="+waitReplicas)
	var subjects []string
	for i := range 24 {
		subjects = append(subjects, fmt.Sprintf("user:reshard-%d", i))
	}
	rdb := dialRedis(t, c.URL())
	ctx := context.Background()
	layout := layoutOf(c.URL())
	var slots []int // the slots of the subjects' buckets on the first master
	for _, s := range subjects {
		slot, err := rdb.ClusterKeySlot(ctx, layout.SubjectPrefix(s)).Result()
		if err != nil {
			t.Fatal(err)
		}
		if masterOf(t, c, int(slot)) == c.Masters[0].Addr() && !slices.Contains(slots, int(slot)) {
			slots = append(slots, int(slot))
		}
	}
	if len(slots) < 2 {
		t.Fatalf("the subjects' buckets on the first master are in slots %v: want two or more", slots)
	}
	stop := make(chan struct{})
	lr := drive(func() *quotad { return q }, subjects, 16, stop, false)
	time.Sleep(1500 * time.Millisecond)
	moved := time.Now()
	for _, slot := range slots {
		began := time.Now()
		n, err := c.MoveSlot(ctx, slot, c.Masters[0], c.Masters[2])
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("moved slot %d: %d keys in %s", slot, n, time.Since(began).Round(time.Millisecond))
		time.Sleep(500 * time.Millisecond) // a flush and a few hundred consumes between moves
	}
	time.Sleep(3 * time.Second)
	close(stop)
	<-lr.done
	// A move refuses a consume's script (TRYAGAIN: its keys are split
	// between the two masters; MOVED: the map of slots is old): sent again
	// until the move ends, or, past a short wait, served from Postgres
	// until the probe passes. Both are logged, as the failover's window is.
	retries := int(metricValue(t, q, "quotad_redis_slot_moving_retries_total"))
	t.Logf("calls sent again while a slot moved: %d; switches to postgres: %d", retries, strings.Count(q.out.String(), "serving from postgres"))
	if retries == 0 {
		t.Errorf("no call was refused while its slot moved: the moves did not meet the load")
	}
	settleLoad(t, q, pg, c.URL(), subjects, lr, "the first move", moved)
	// The slots, keys and streams are the new master's now.
	src := redis.NewClient(&redis.Options{Addr: c.Masters[0].Addr()})
	defer src.Close()
	dst := redis.NewClient(&redis.Options{Addr: c.Masters[2].Addr()})
	defer dst.Close()
	for _, slot := range slots {
		left, err := src.ClusterCountKeysInSlot(ctx, slot).Result()
		if err != nil || left != 0 {
			t.Fatalf("slot %d: %d keys left on the old master (%v)", slot, left, err)
		}
		if n, err := dst.ClusterCountKeysInSlot(ctx, slot).Result(); err != nil || n == 0 {
			t.Fatalf("slot %d: %d keys on the new master (%v)", slot, n, err)
		}
	}
}

// TestBucketsChangeRefusedWhileInUse: an instance started with another
// QUOTAD_REDIS_BUCKETS than the running ones refuses to start and names
// the setting in use; once they have stopped (each flushing its events on
// the way out), it starts, and every unit counted before is there.
func TestBucketsChangeRefusedWhileInUse(t *testing.T) {
	rd, pg := testenv.RedisURL(t), testenv.PostgresURL(t)
	a := startQuotad(t, "QUOTAD_POSTGRES_URL="+pg, "QUOTAD_REDIS_URL="+rd, "QUOTAD_REDIS_BUCKETS=4", "QUOTAD_FLUSH_INTERVAL=1h")
	for range 5 {
		consume(t, a, "user:layout", 2)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, quotadBin, "serve")
	cmd.Env = append(os.Environ(), "QUOTAD_ADDR=127.0.0.1:"+strconv.Itoa(testenv.FreePort(t)), "QUOTAD_ADMIN_KEY="+adminKey, "QUOTAD_DEV=1",
		"QUOTAD_POSTGRES_URL="+pg, "QUOTAD_REDIS_URL="+rd, "QUOTAD_REDIS_BUCKETS=0")
	out, err := cmd.CombinedOutput()
	if err == nil || ctx.Err() != nil || !strings.Contains(string(out), "QUOTAD_REDIS_BUCKETS=4 has") {
		t.Fatalf("a start with 0 buckets beside one with 4: %v\n%s\nwant a refusal naming QUOTAD_REDIS_BUCKETS=4", err, out)
	}
	t.Logf("refused: %s", bytes.TrimSpace(out))
	if got := a.used(t, "user:layout"); got != 10 {
		t.Fatalf("after the refused start the first instance says %d used, want 10", got)
	}
	a.stop(t)
	b := startQuotad(t, "QUOTAD_POSTGRES_URL="+pg, "QUOTAD_REDIS_URL="+rd, "QUOTAD_REDIS_BUCKETS=0")
	if got := b.used(t, "user:layout"); got != 10 {
		t.Fatalf("with the new layout %d used, want the 10 flushed under the old one", got)
	}
	consume(t, b, "user:layout", 1)
	b.stop(t)
	waitFlushed(t, pg, "user:layout", 11)
}

// TestBucketsChangeWithRedisDownStaysOnPostgres: an instance with another
// QUOTAD_REDIS_BUCKETS that starts while Redis is down cannot be refused
// at start; once Redis is back it does not serve from it while the other
// layout's events wait there, and serves from Postgres meanwhile.
func TestBucketsChangeWithRedisDownStaysOnPostgres(t *testing.T) {
	r := testenv.StartRedis(t, testenv.RedisOptions{AOF: true})
	rd, pg := "redis://"+r.Addr()+"/0", testenv.PostgresURL(t)
	a := startQuotad(t, "QUOTAD_POSTGRES_URL="+pg, "QUOTAD_REDIS_URL="+rd, "QUOTAD_REDIS_BUCKETS=4", "QUOTAD_FLUSH_INTERVAL=1h")
	consume(t, a, "user:layout-down", 3)
	a.kill(t) // its event stays in its bucket's stream
	r.Kill(t)
	b := startQuotad(t, "QUOTAD_POSTGRES_URL="+pg, "QUOTAD_REDIS_URL="+rd, "QUOTAD_REDIS_BUCKETS=0")
	r.Start(t)
	time.Sleep(3 * time.Second) // several probes
	_, _, body := b.do(t, "GET", "/readyz", "", "", nil)
	if !bytes.Contains(body, []byte(`"redis":"down"`)) || !strings.Contains(b.out.String(), "in use with another QUOTAD_REDIS_BUCKETS") {
		t.Fatalf("with the other layout's event in Redis: /readyz %s\n%s\nwant redis down and the refusal logged", body, b.out)
	}
	consume(t, b, "user:layout-down", 2) // from Postgres
	if got := b.used(t, "user:layout-down"); got != 2 {
		t.Fatalf("used %d on the instance on Postgres, want the 2 it took (the 3 wait in the other layout's stream)", got)
	}
}
