package soak

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/quotad/quotad/internal/testenv"
)

// Fault kinds. Each is injected, held for a while and healed before the
// next one starts, so that a failure can be laid at the door of the
// faults around it.
const (
	faultKillQuotad    = "kill-quotad"    // kill -9 of one quotad, restarted after 0.5-3 s
	faultKillRedis     = "kill-redis"     // SIGKILL of Redis (a master, on a cluster), restarted from its AOF after 0.5-3 s
	faultStopPostgres  = "stop-postgres"  // Postgres stopped (fast or immediate shutdown) for 2-10 s
	faultPauseRedis    = "pause-redis"    // Redis (a master) frozen (SIGSTOP) for 0.5-3 s: past quotad's 250 ms Redis timeouts, and on a cluster at times its node timeout (a failover)
	faultPausePostgres = "pause-postgres" // Postgres and its backends frozen for 1-8 s
	faultNetLatency    = "net-latency"    // 20-300 ms added each way between one quotad (or all) and one store, for 2-8 s
	faultNetReset      = "net-reset"      // every connection between one quotad (or all) and one store reset
	faultNetHalfOpen   = "net-halfopen"   // nothing forwarded, nothing closed, for 0.5-5 s; then the held data goes through, or every connection is reset
)

var allFaults = []string{
	faultKillQuotad, faultKillRedis, faultStopPostgres, faultPauseRedis,
	faultPausePostgres, faultNetLatency, faultNetReset, faultNetHalfOpen,
}

// faultRec is one injected fault.
type faultRec struct {
	kind, target, detail string
	start, end           time.Duration // from the soak's start: injected, healed
}

func (f faultRec) String() string {
	s := fmt.Sprintf("t+%6.1fs  %-15s %-22s", f.start.Seconds(), f.kind, f.target)
	if f.end > f.start {
		s += fmt.Sprintf(" healed t+%.1fs (%.1fs)", f.end.Seconds(), (f.end - f.start).Seconds())
	}
	if f.detail != "" {
		s += "  " + f.detail
	}
	return s
}

// fatalTB turns the Fatal of a testenv helper, called from the fault
// goroutine (where t.FailNow must not be called), into a panic that
// injector.run recovers and reports.
type fatalTB struct{ testing.TB }

type fatalErr struct{ msg string }

func (f fatalTB) Fatalf(format string, args ...any) { panic(fatalErr{fmt.Sprintf(format, args...)}) }
func (f fatalTB) Fatal(args ...any)                 { panic(fatalErr{fmt.Sprint(args...)}) }
func (f fatalTB) FailNow()                          { panic(fatalErr{"FailNow"}) }

// injector draws and applies faults.
type injector struct {
	c     *cluster
	tb    fatalTB
	kinds []string
	rng   *rand.Rand
	t0    time.Time

	mu  sync.Mutex
	log []faultRec
	err error // a fault that could not be healed: the soak stops there
}

func (fi *injector) since() time.Duration { return time.Since(fi.t0) }

// run injects a fault every few seconds until ctx ends; the fault under
// way is always healed first.
func (fi *injector) run(ctx context.Context) {
	defer func() {
		if r := recover(); r != nil {
			fe, ok := r.(fatalErr)
			if !ok {
				panic(r)
			}
			fi.mu.Lock()
			fi.err = fmt.Errorf("fault injection: %s", fe.msg)
			fi.mu.Unlock()
		}
	}()
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second + time.Duration(fi.rng.Int64N(int64(3*time.Second)))):
		}
		if ctx.Err() != nil {
			return
		}
		kind := fi.kinds[fi.rng.IntN(len(fi.kinds))]
		rec := faultRec{kind: kind, start: fi.since()}
		fi.apply(&rec)
		rec.end = fi.since()
		fi.mu.Lock()
		fi.log = append(fi.log, rec)
		fi.mu.Unlock()
	}
}

// hold draws a duration in [lo, hi) and sleeps it.
func (fi *injector) hold(lo, hi time.Duration) {
	d := lo + time.Duration(fi.rng.Int64N(int64(hi-lo)))
	time.Sleep(d)
}

// proxies draws the links a network fault hits: one store (Redis or
// Postgres; Postgres only on a cluster, which quotad reaches directly),
// between it and one instance or every instance.
func (fi *injector) proxies(rec *faultRec) []*Proxy {
	store := []string{"redis", "postgres"}[fi.rng.IntN(2)]
	if fi.c.rc != nil {
		store = "postgres"
	}
	var ins []*instance
	if fi.rng.IntN(3) == 0 {
		ins = fi.c.insts
		rec.target = "all->" + store
	} else {
		in := fi.c.insts[fi.rng.IntN(len(fi.c.insts))]
		ins = []*instance{in}
		rec.target = in.name + "->" + store
	}
	var out []*Proxy
	for _, in := range ins {
		if store == "redis" {
			out = append(out, in.redisPx)
		} else {
			out = append(out, in.pgPx)
		}
	}
	return out
}

func (fi *injector) apply(rec *faultRec) {
	switch rec.kind {
	case faultKillQuotad:
		in := fi.c.insts[fi.rng.IntN(len(fi.c.insts))]
		rec.target = in.name
		in.crash()
		fi.hold(500*time.Millisecond, 3*time.Second)
		if err := in.startAndWait(60 * time.Second); err != nil {
			fi.tb.Fatalf("restart %s: %v", in.name, err)
		}
	case faultKillRedis:
		r := fi.redis(rec)
		r.Kill(fi.tb)
		fi.hold(500*time.Millisecond, 3*time.Second)
		r.Start(fi.tb) // waits until the AOF is loaded
		fi.healthy(rec)
	case faultStopPostgres:
		rec.target = "postgres"
		if fi.rng.IntN(2) == 0 {
			rec.detail = "fast shutdown"
			fi.c.pg.Stop(fi.tb)
		} else {
			rec.detail = "immediate shutdown (crash recovery on start)"
			fi.c.pg.Crash(fi.tb)
		}
		fi.hold(2*time.Second, 10*time.Second)
		fi.c.pg.Start(fi.tb)
	case faultPauseRedis:
		r := fi.redis(rec)
		r.Pause(fi.tb)
		fi.hold(500*time.Millisecond, 3*time.Second)
		r.Resume(fi.tb)
		fi.healthy(rec)
	case faultPausePostgres:
		rec.target = "postgres"
		fi.c.pg.Pause(fi.tb)
		fi.hold(time.Second, 8*time.Second)
		fi.c.pg.Resume(fi.tb)
	case faultNetLatency:
		pxs := fi.proxies(rec)
		d := 20*time.Millisecond + time.Duration(fi.rng.Int64N(int64(280*time.Millisecond)))
		rec.detail = fmt.Sprintf("+%v each way", d.Round(time.Millisecond))
		for _, p := range pxs {
			p.SetLatency(d)
		}
		fi.hold(2*time.Second, 8*time.Second)
		for _, p := range pxs {
			p.SetLatency(0)
		}
	case faultNetReset:
		var n int64
		for _, p := range fi.proxies(rec) {
			before := p.Resets.Load()
			p.ResetAll()
			n += p.Resets.Load() - before
		}
		rec.detail = fmt.Sprintf("%d connections reset", n)
	case faultNetHalfOpen:
		pxs := fi.proxies(rec)
		for _, p := range pxs {
			p.Blackhole()
		}
		fi.hold(500*time.Millisecond, 5*time.Second)
		reset := fi.rng.IntN(2) == 0
		if reset {
			rec.detail = "then reset"
		} else {
			rec.detail = "then the held data delivered"
		}
		for _, p := range pxs {
			p.Heal(reset)
		}
	default:
		fi.tb.Fatalf("unknown fault %q", rec.kind)
	}
}

// redis draws the Redis a fault hits: the one Redis, or one of the
// cluster's masters of the moment.
func (fi *injector) redis(rec *faultRec) *testenv.Redis {
	if fi.c.rc == nil {
		rec.target = "redis"
		return fi.c.rs
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	masters, err := fi.c.rc.CurrentMasters(ctx)
	if err != nil {
		fi.tb.Fatalf("pick a master: %v", err)
	}
	r := masters[fi.rng.IntN(len(masters))]
	rec.target = "master " + r.Addr()
	return r
}

// healthy waits, on a cluster, until every slot has a master again with
// a replica in sync: until then WAIT 1 confirms nothing for the slots of
// a promoted replica, and a second fault could leave a slot with no node.
func (fi *injector) healthy(rec *faultRec) {
	if fi.c.rc == nil {
		return
	}
	began := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	if err := fi.c.rc.WaitHealthy(ctx); err != nil {
		fi.tb.Fatalf("the cluster did not recover from %s: %v", rec.kind, err)
	}
	rec.detail = fmt.Sprintf("cluster healthy %.1fs after", time.Since(began).Seconds())
}

// faults returns the log and the injection error, if any.
func (fi *injector) faults() ([]faultRec, error) {
	fi.mu.Lock()
	defer fi.mu.Unlock()
	return slices.Clone(fi.log), fi.err
}

// around lists the faults whose window overlaps [from-margin, to+margin].
func around(log []faultRec, from, to time.Duration) []faultRec {
	const margin = 5 * time.Second
	var out []faultRec
	for _, f := range log {
		end := max(f.end, f.start)
		if end >= from-margin && f.start <= to+margin {
			out = append(out, f)
		}
	}
	return out
}

// countKinds summarizes a log: "kill-quotad 4, kill-redis 3, ...".
func countKinds(log []faultRec) string {
	n := map[string]int{}
	for _, f := range log {
		n[f.kind]++
	}
	var parts []string
	for _, k := range allFaults {
		if n[k] > 0 {
			parts = append(parts, fmt.Sprintf("%s %d", k, n[k]))
		}
	}
	return strings.Join(parts, ", ")
}
