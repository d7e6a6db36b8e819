package soak

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/quotad/quotad/cache"
	"github.com/quotad/quotad/internal/testenv"
)

// cluster is what the soak runs: one Postgres and one Redis (append-only
// file, appendfsync always) started by testenv, and n quotad processes,
// each reaching each store through its own Proxy, so that a network fault
// can cut one instance off while the others go on.
//
// With SOAK_REDIS=cluster, Redis is a Redis Cluster of three masters with
// a replica each (append-only too) and quotad waits for one replica
// (QUOTAD_REDIS_WAIT_REPLICAS=1), so that a failover loses nothing
// acknowledged. Its nodes tell clients each other's addresses, so quotad
// reaches them directly: the network faults then hit Postgres only.
type cluster struct {
	pg       *testenv.Postgres
	rs       *testenv.Redis        // one Redis; nil on a cluster
	rc       *testenv.RedisCluster // the cluster; nil on one Redis
	rdb      redis.UniversalClient // straight to Redis, not through a proxy: the soak's own reads
	layout   cache.Layout          // quotad's keys on it
	adminKey string
	insts    []*instance
	logDir   string
}

// instance is one quotad process, restarted on the same address after a
// kill.
type instance struct {
	name            string
	addr            string
	env             []string
	bin             string
	logPath         string
	redisPx, pgPx   *Proxy // redisPx nil on a cluster
	redisURL        string
	mu              sync.Mutex
	cmd             *exec.Cmd
	done            chan struct{} // closed when cmd has exited
	exitErr         error         // valid after done
	starts, crashes int
}

// buildQuotad builds the real binary once for the soak, with the race
// detector when race is set. A build can fail while someone else's edit
// of the tree is half done; the caller says so and stops.
func buildQuotad(tb testing.TB, dir string, race bool) string {
	tb.Helper()
	bin := filepath.Join(dir, "quotad")
	args := []string{"build", "-o", bin}
	if race {
		args = append(args, "-race")
	}
	args = append(args, "github.com/quotad/quotad/cmd/quotad")
	if out, err := exec.Command("go", args...).CombinedOutput(); err != nil {
		tb.Fatalf("build quotad: %v\n%s", err, out)
	}
	return bin
}

func newCluster(t *testing.T, bin, logDir string, cfg config) *cluster {
	t.Helper()
	c := &cluster{
		pg:       testenv.StartPostgres(t),
		adminKey: randomHex(32), // not dev mode: a real-length admin key
		logDir:   logDir,
	}
	redisURL := ""
	if cfg.cluster {
		c.rc = testenv.StartRedisCluster(t, testenv.RedisOptions{AOF: true})
		c.layout = cache.NewLayout(cache.DefaultClusterBuckets)
		redisURL = c.rc.URL()
		var err error
		c.rdb, _, _, err = cache.Dial(redisURL, cache.Timeouts{Dial: time.Second, Read: 5 * time.Second, Write: 5 * time.Second, Pool: 5 * time.Second, PoolSize: 4})
		if err != nil {
			t.Fatal(err)
		}
	} else {
		c.rs = testenv.StartRedis(t, testenv.RedisOptions{AOF: true})
		c.rdb = redis.NewClient(&redis.Options{Addr: c.rs.Addr(), MaxRetries: -1})
	}
	t.Cleanup(func() { c.rdb.Close() })
	pgURL, err := url.Parse(c.pg.URL())
	if err != nil {
		t.Fatal(err)
	}
	for i := range cfg.instances {
		in := &instance{
			name:    fmt.Sprintf("q%d", i),
			addr:    fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t)),
			bin:     bin,
			logPath: filepath.Join(logDir, fmt.Sprintf("quotad-q%d.log", i)),
		}
		if in.pgPx, err = NewProxy(pgURL.Host); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(in.pgPx.Close)
		in.redisURL = redisURL
		if c.rs != nil {
			if in.redisPx, err = NewProxy(c.rs.Addr()); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(in.redisPx.Close)
			in.redisURL = "redis://" + in.redisPx.Addr() + "/0"
		}
		viaProxy := *pgURL
		viaProxy.Host = in.pgPx.Addr()
		in.env = []string{
			"QUOTAD_ADDR=" + in.addr,
			"QUOTAD_ADMIN_KEY=" + c.adminKey,
			"QUOTAD_POSTGRES_URL=" + viaProxy.String(),
			"QUOTAD_REDIS_URL=" + in.redisURL,
			"QUOTAD_LOG_LEVEL=warn",
		}
		if cfg.cluster {
			in.env = append(in.env, "QUOTAD_REDIS_WAIT_REPLICAS="+cfg.waitRepl)
		}
		c.insts = append(c.insts, in)
		t.Cleanup(func() { in.kill() })
	}
	// One at a time: each start migrates, and the later ones would only
	// queue on the migration lock.
	for _, in := range c.insts {
		if err := in.startAndWait(60 * time.Second); err != nil {
			t.Fatal(err)
		}
	}
	return c
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

// Processes are forked from one goroutine locked to its OS thread for
// good: Pdeathsig (quotad dies with the soak, even on SIGKILL) is tied to
// the thread that forked, not to the process (see testenv's package doc).
var spawner = struct {
	once sync.Once
	reqs chan spawnReq
}{}

type spawnReq struct {
	cmd  *exec.Cmd
	errc chan error
}

func startCmd(cmd *exec.Cmd) error {
	spawner.once.Do(func() {
		spawner.reqs = make(chan spawnReq)
		go func() {
			runtime.LockOSThread() // never unlocked
			for r := range spawner.reqs {
				r.errc <- r.cmd.Start()
			}
		}()
	})
	errc := make(chan error, 1)
	spawner.reqs <- spawnReq{cmd, errc}
	return <-errc
}

// start starts the process (its output appended to its log).
func (in *instance) start() error {
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.cmd != nil {
		select {
		case <-in.done:
		default:
			return fmt.Errorf("%s is already running", in.name)
		}
	}
	logf, err := os.OpenFile(in.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	fmt.Fprintf(logf, "=== soak: start %d at %s\n", in.starts+1, time.Now().UTC().Format(time.RFC3339Nano))
	cmd := exec.Command(in.bin, "serve")
	cmd.Env = append(os.Environ(), in.env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := startCmd(cmd); err != nil {
		return err
	}
	in.starts++
	in.cmd, in.done, in.exitErr = cmd, make(chan struct{}), nil
	done := in.done
	go func() {
		err := cmd.Wait()
		in.mu.Lock()
		in.exitErr = err
		in.mu.Unlock()
		close(done)
	}()
	return nil
}

// startAndWait starts the process and waits until it answers /healthz. A
// start can fail for reasons of the moment (Postgres restarting behind its
// proxy refuses the migration); it is tried again until timeout.
func (in *instance) startAndWait(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		if err := in.start(); err != nil {
			return err
		}
		err := in.waitHealthy(deadline)
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			in.kill()
			return fmt.Errorf("%s did not start within %v: %v (log: %s)", in.name, timeout, err, in.logPath)
		}
		in.kill()
		time.Sleep(200 * time.Millisecond)
	}
}

func (in *instance) waitHealthy(deadline time.Time) error {
	in.mu.Lock()
	done := in.done
	in.mu.Unlock()
	hc := &http.Client{Timeout: time.Second}
	for {
		resp, err := hc.Get("http://" + in.addr + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("healthz %d", resp.StatusCode)
		}
		select {
		case <-done:
			in.mu.Lock()
			defer in.mu.Unlock()
			return fmt.Errorf("exited: %v", in.exitErr)
		default:
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitReady waits until /readyz says both stores are up and the last
// flush succeeded.
func (in *instance) waitReady(timeout time.Duration) error {
	hc := &http.Client{Timeout: 3 * time.Second}
	deadline := time.Now().Add(timeout)
	var last string
	for {
		resp, err := hc.Get("http://" + in.addr + "/readyz")
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			last = string(b)
			if strings.Contains(last, `"status":"ok"`) {
				return nil
			}
		} else {
			last = err.Error()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready after %v: %s", in.name, timeout, last)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// kill sends SIGKILL (kill -9) and waits for the exit; a no-op when the
// process is not running.
func (in *instance) kill() {
	in.mu.Lock()
	cmd, done := in.cmd, in.done
	in.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Kill()
	<-done
}

// crash is kill for the fault: it counts.
func (in *instance) crash() {
	in.kill()
	in.mu.Lock()
	in.crashes++
	in.mu.Unlock()
}

// stop sends SIGTERM and waits; quotad must finish its requests, drain
// its flusher and exit 0.
func (in *instance) stop(timeout time.Duration) error {
	in.mu.Lock()
	cmd, done := in.cmd, in.done
	in.mu.Unlock()
	if cmd == nil {
		return nil
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(timeout):
		in.kill()
		return fmt.Errorf("%s did not exit within %v of SIGTERM", in.name, timeout)
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.exitErr != nil {
		return fmt.Errorf("%s exited with %v after SIGTERM", in.name, in.exitErr)
	}
	return nil
}

// pendingLen is the number of entries of the pending streams (q:pending,
// or each bucket's on a cluster): usage Redis holds that no flush has
// written to Postgres and acknowledged yet (an acknowledged entry is
// deleted).
func (c *cluster) pendingLen(ctx context.Context) (int64, error) {
	var sum int64
	for _, s := range c.layout.Streams() {
		n, err := c.rdb.XLen(ctx, s).Result()
		if err != nil && !errors.Is(err, redis.Nil) {
			return 0, err
		}
		sum += n
	}
	return sum, nil
}

// flushRedis deletes every key of Redis, of every master on a cluster.
func (c *cluster) flushRedis(ctx context.Context) error {
	if cc, ok := c.rdb.(*redis.ClusterClient); ok {
		return cc.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error { return m.FlushAll(ctx).Err() })
	}
	return c.rdb.FlushAll(ctx).Err()
}
