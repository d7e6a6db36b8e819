// Package testenv runs real Postgres and Redis servers for tests.
//
// It is the one shared helper every quotad test uses for real servers:
//
//   - PostgresURL / RedisURL hand each test an isolated, empty database on a
//     server shared by the whole test binary (started lazily, on first use).
//   - StartPostgres / StartRedis start a private server for a test that needs
//     to stop, kill or restart it.
//
// Each test package that uses it calls Main from TestMain:
//
//	func TestMain(m *testing.M) { testenv.Main(m) }
//
// If the server binaries are missing, tests are skipped with a message, unless
// the CI environment variable is set (to anything but "", "0" or "false"), in
// which case they fail. Install the binaries with `scripts/stack.sh install`.
//
// Servers listen on 127.0.0.1 only, on ports from FreePort, and keep their
// data under one directory per test binary, on /dev/shm when it is a roomy
// tmpfs (QUOTAD_TESTENV_TMPDIR overrides); see "Data directories" below.
// Postgres runs as the postgres OS user when the tests run as root.
//
// # Process lifetime
//
// Servers must never outlive the test binary, including when it panics, hits
// the -timeout, or is killed with SIGKILL. Two mechanisms ensure this:
//
//  1. Main stops the shared servers (and any private server still running)
//     after m.Run; private servers are stopped by tb.Cleanup.
//  2. Every server is started with SysProcAttr.Pdeathsig = SIGKILL, so the
//     kernel kills it when its parent dies. The kernel ties Pdeathsig to the
//     OS *thread* that forked the child, not the process: if that thread exits
//     first the server is killed early. The Go runtime only terminates a
//     thread when a goroutine exits while locked to it, which is rare but
//     possible, so all servers are forked from one dedicated goroutine that
//     calls runtime.LockOSThread and never returns: its thread lives exactly
//     as long as the process. (Go sets Pdeathsig after switching to the
//     postgres uid/gid in the child, so the credential change does not clear
//     it.) Postgres backends exit on their own once the postmaster is gone.
//
// Data directories of a binary that died without running Main are removed by
// the next test binary that starts a server (see "Data directories").
package testenv

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

const (
	readyTimeout = 30 * time.Second
	stopTimeout  = 60 * time.Second
	// startAttempts bounds retries when a port picked by FreePort was taken
	// by someone else before the server could bind it.
	startAttempts = 4
	// redisDatabases is the --databases setting of the shared redis-server;
	// RedisURL hands out indexes 1..redisDatabases-1 (0 is left unused).
	redisDatabases = 10000
)

// Main runs the package's tests and then stops the servers this helper
// started. Each test package with real-server tests calls it from TestMain:
//
//	func TestMain(m *testing.M) { testenv.Main(m) }
//
// Main returns instead of calling os.Exit, so a TestMain may defer its own
// cleanup around it: when TestMain returns, the testing package exits with
// m.Run's status.
func Main(m *testing.M) {
	m.Run()
	shutdownAll()
}

// FreePort returns a free TCP port on 127.0.0.1.
func FreePort(tb testing.TB) int {
	tb.Helper()
	port, err := freePort()
	if err != nil {
		tb.Fatalf("testenv: free port: %v", err)
	}
	return port
}

func freePort() (int, error) {
	// Ports are drawn below Linux's ephemeral range (32768-60999): the
	// kernel never gives those to client sockets, so a port found free
	// here stays free until the server binds it, however many connections
	// the other tests open meanwhile. Ports from :0 would be ephemeral ones,
	// and a busy test run took them back before the server could bind.
	reserved := map[int]bool{25432: true, 26379: true} // the dev stack (scripts/stack.sh)
	for _, env := range []string{"PGPORT", "REDISPORT"} {
		if n, err := strconv.Atoi(os.Getenv(env)); err == nil {
			reserved[n] = true
		}
	}
	var lastErr error
	for range 200 {
		port := 10000 + mrand.IntN(32768-10000)
		if reserved[port] {
			continue
		}
		l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port))
		if err != nil {
			lastErr = err
			continue
		}
		l.Close()
		return port, nil
	}
	return 0, fmt.Errorf("no free port below 32768 after 200 tries: %w", lastErr)
}

// ---------------------------------------------------------------------------
// Availability: skip locally, fail in CI.

// errUnavailable marks a missing prerequisite (binary, OS user): the test is
// skipped, or fails when CI is set.
type errUnavailable struct{ msg string }

func (e *errUnavailable) Error() string { return e.msg }

func inCI() bool {
	v := strings.TrimSpace(os.Getenv("CI"))
	return v != "" && v != "0" && !strings.EqualFold(v, "false")
}

// fail reports err: a Skip (or Fatal under CI) for errUnavailable, else Fatal.
func fail(tb testing.TB, err error) {
	tb.Helper()
	var u *errUnavailable
	if errors.As(err, &u) {
		if inCI() {
			tb.Fatalf("testenv: %s (CI is set, so this is a failure; run scripts/stack.sh install)", u.msg)
		}
		tb.Skipf("testenv: %s; skipping (run scripts/stack.sh install; with CI set this fails)", u.msg)
	}
	tb.Fatalf("testenv: %v", err)
}

// ---------------------------------------------------------------------------
// Processes.

var (
	spawnOnce sync.Once
	spawnReqs chan spawnReq
)

type spawnReq struct {
	cmd  *exec.Cmd
	errc chan error
}

// startCmd starts cmd from the dedicated, permanently locked OS thread (see
// the package doc, "Process lifetime").
func startCmd(cmd *exec.Cmd) error {
	spawnOnce.Do(func() {
		spawnReqs = make(chan spawnReq)
		go func() {
			runtime.LockOSThread() // never unlocked: the thread lives as long as the process
			for r := range spawnReqs {
				r.errc <- r.cmd.Start()
			}
		}()
	})
	errc := make(chan error, 1)
	spawnReqs <- spawnReq{cmd, errc}
	return <-errc
}

// process is a running server.
type process struct {
	name    string
	cmd     *exec.Cmd
	done    chan struct{} // closed when the process has exited
	waitErr error         // valid after done is closed
}

var live = struct {
	sync.Mutex
	procs map[*process]struct{}
}{procs: map[*process]struct{}{}}

// spawn starts a server process with stdout and stderr appended to logPath.
func spawn(name, path string, args []string, dir, logPath string, cred *syscall.Credential) (*process, error) {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer logf.Close() // the child has its own descriptor
	cmd := exec.Command(path, args...)
	cmd.Dir = dir
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Pdeathsig:  syscall.SIGKILL,
		Setpgid:    true, // keep a terminal's Ctrl-C away from the server; the test binary handles it
		Credential: cred,
	}
	if err := startCmd(cmd); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &process{name: name, cmd: cmd, done: make(chan struct{})}
	live.Lock()
	live.procs[p] = struct{}{}
	live.Unlock()
	go func() {
		p.waitErr = cmd.Wait()
		live.Lock()
		delete(live.procs, p)
		live.Unlock()
		close(p.done)
	}()
	return p, nil
}

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends sig and waits for the process to exit; after timeout it sends
// SIGKILL and returns an error.
func (p *process) stop(sig syscall.Signal, timeout time.Duration) error {
	if p.exited() {
		return nil
	}
	_ = p.cmd.Process.Signal(sig)
	select {
	case <-p.done:
		return nil
	case <-time.After(timeout):
	}
	_ = p.cmd.Process.Kill()
	<-p.done
	return fmt.Errorf("%s (pid %d) did not exit within %v of %v; killed", p.name, p.cmd.Process.Pid, timeout, sig)
}

// logTail returns the end of a server log for error messages.
func logTail(path string) string {
	const max = 16 << 10
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	if len(b) > max {
		b = append([]byte("...\n"), b[len(b)-max:]...)
	}
	return fmt.Sprintf("--- %s ---\n%s\n--- end of log ---", path, strings.TrimRight(string(b), "\n"))
}

func logContains(path string, subs ...string) bool {
	b, _ := os.ReadFile(path)
	for _, s := range subs {
		if strings.Contains(string(b), s) {
			return true
		}
	}
	return false
}

// ---------------------------------------------------------------------------
// Postgres binaries and OS user.

type pgBinaries struct {
	dir  string              // holds initdb and postgres
	cred *syscall.Credential // nil unless running as root
	uid  int                 // OS user the server runs as
	gid  int
}

var (
	pgBinOnce sync.Once
	pgBin     *pgBinaries
	pgBinErr  error
)

func postgresBinaries() (*pgBinaries, error) {
	pgBinOnce.Do(func() { pgBin, pgBinErr = findPostgres() })
	return pgBin, pgBinErr
}

func findPostgres() (*pgBinaries, error) {
	dir := findPostgresBinDir()
	if dir == "" {
		return nil, &errUnavailable{"Postgres binaries (initdb, postgres) not found on PATH or in /usr/lib/postgresql/*/bin (apt-get install -y postgresql-15)"}
	}
	b := &pgBinaries{dir: dir, uid: os.Geteuid(), gid: os.Getegid()}
	if os.Geteuid() == 0 {
		// Postgres refuses to run as root.
		uid, gid, err := postgresUser()
		if err != nil {
			return nil, &errUnavailable{fmt.Sprintf("running as root, but no 'postgres' OS user to run Postgres as: %v", err)}
		}
		b.uid, b.gid = uid, gid
		b.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	}
	return b, nil
}

func postgresUser() (uid, gid int, err error) {
	u, err := user.Lookup("postgres")
	if err != nil {
		return 0, 0, err
	}
	uid, err1 := strconv.Atoi(u.Uid)
	gid, err2 := strconv.Atoi(u.Gid)
	if err1 != nil || err2 != nil {
		return 0, 0, fmt.Errorf("postgres user has non-numeric uid/gid %q/%q", u.Uid, u.Gid)
	}
	return uid, gid, nil
}

// ---------------------------------------------------------------------------
// Data directories.
//
// All data of one test binary lives in one session directory,
// <base>/quotad-testenv-*, removed by Main. base is $QUOTAD_TESTENV_TMPDIR if
// set, else /dev/shm when it is a tmpfs with room to spare, else
// os.TempDir(). tmpfs matters: on this project's ext4 VMs a CREATE DATABASE
// takes ~280 ms and initdb ~1.3 s on disk, versus ~10-30 ms and ~0.4 s on
// tmpfs. Since tmpfs holds RAM, and a test binary that is killed or times out
// never runs Main, each binary first removes the session directories of
// binaries that are no longer running.

const sessionPrefix = "quotad-testenv-"

var session struct {
	once sync.Once
	dir  string
	err  error
}

func sessionDir() (string, error) {
	session.once.Do(func() { session.dir, session.err = makeSessionDir() })
	return session.dir, session.err
}

func makeSessionDir() (string, error) {
	// As root, the postgres user must be able to reach its data dirs.
	checkUID, checkGID := -1, -1
	if os.Geteuid() == 0 {
		if uid, gid, err := postgresUser(); err == nil {
			checkUID, checkGID = uid, gid
		}
	}
	var candidates []string
	if d := os.Getenv("QUOTAD_TESTENV_TMPDIR"); d != "" {
		candidates = append(candidates, d)
	} else {
		if roomyTmpfs("/dev/shm") {
			candidates = append(candidates, "/dev/shm")
		}
		candidates = append(candidates, os.TempDir(), "/tmp")
	}
	var base string
	for _, c := range candidates {
		if checkUID < 0 || searchableBy(c, checkUID, checkGID) {
			base = c
			break
		}
	}
	if base == "" {
		return "", fmt.Errorf("none of %v is a directory the postgres user can reach", candidates)
	}
	removeStaleSessions(base)
	dir, err := os.MkdirTemp(base, sessionPrefix)
	if err != nil {
		return "", err
	}
	// MkdirTemp makes it 0700; the postgres user must be able to traverse
	// it to its own subdirectory.
	if err := os.Chmod(dir, 0o755); err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(dir, "owner"), []byte(selfID()), 0o644); err != nil {
		return "", err
	}
	return dir, nil
}

// roomyTmpfs reports whether dir is a tmpfs with at least 2 GiB available
// (a Docker-style 64 MiB /dev/shm does not qualify).
func roomyTmpfs(dir string) bool {
	const tmpfsMagic = 0x01021994
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return false
	}
	return st.Type == tmpfsMagic && uint64(st.Bavail)*uint64(st.Bsize) >= 2<<30
}

// selfID identifies this process: "pid starttime" (the start time guards
// against pid reuse).
func selfID() string {
	pid := os.Getpid()
	return fmt.Sprintf("%d %s", pid, procStartTime(pid))
}

// procStartTime returns field 22 of /proc/pid/stat, "" if unknown.
func procStartTime(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ""
	}
	// The command name (field 2) may contain spaces; fields after it are
	// plain. starttime is the 20th field after the closing parenthesis.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return ""
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 20 {
		return ""
	}
	return f[19]
}

// removeStaleSessions removes session dirs under base whose owner process
// has exited (their servers died with it, through Pdeathsig).
func removeStaleSessions(base string) {
	dirs, _ := filepath.Glob(filepath.Join(base, sessionPrefix+"*"))
	for _, d := range dirs {
		b, err := os.ReadFile(filepath.Join(d, "owner"))
		if err != nil {
			// Not yet written by a binary starting right now, or broken.
			if fi, err := os.Stat(d); err == nil && time.Since(fi.ModTime()) > time.Hour {
				_ = os.RemoveAll(d)
			}
			continue
		}
		var pid int
		var start string
		if _, err := fmt.Sscanf(string(b), "%d %s", &pid, &start); err != nil || pid <= 0 {
			continue
		}
		if procStartTime(pid) != start {
			_ = os.RemoveAll(d)
		}
	}
}

// newDataDir creates a fresh directory in the session dir, owned by uid/gid
// when running as root. (Not t.TempDir(): as root its parent is 0700 root,
// which the postgres user cannot enter.)
func newDataDir(prefix string, uid, gid int) (string, error) {
	sd, err := sessionDir()
	if err != nil {
		return "", err
	}
	dir, err := os.MkdirTemp(sd, prefix)
	if err != nil {
		return "", err
	}
	if os.Geteuid() == 0 && uid >= 0 {
		if err := os.Chown(dir, uid, gid); err != nil {
			os.RemoveAll(dir)
			return "", err
		}
	}
	return dir, nil
}

// findPostgresBinDir returns the directory of initdb on PATH (symlinks
// resolved) if it also holds postgres, else the highest-versioned
// /usr/lib/postgresql/*/bin that holds both; "" if none.
func findPostgresBinDir() string {
	ok := func(dir string) bool {
		return isExecutable(filepath.Join(dir, "initdb")) && isExecutable(filepath.Join(dir, "postgres"))
	}
	if p, err := exec.LookPath("initdb"); err == nil {
		if r, err := filepath.EvalSymlinks(p); err == nil && ok(filepath.Dir(r)) {
			return filepath.Dir(r)
		}
		if ok(filepath.Dir(p)) {
			return filepath.Dir(p)
		}
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	version := func(d string) float64 {
		v, err := strconv.ParseFloat(filepath.Base(filepath.Dir(d)), 64)
		if err != nil {
			return -1
		}
		return v
	}
	sort.Slice(dirs, func(i, j int) bool { return version(dirs[i]) > version(dirs[j]) })
	for _, d := range dirs {
		if ok(d) {
			return d
		}
	}
	return ""
}

func isExecutable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0
}

// searchableBy reports whether uid/gid can traverse every directory from dir
// up to /, judging by mode bits only.
func searchableBy(dir string, uid, gid int) bool {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return false
	}
	for {
		fi, err := os.Stat(dir)
		if err != nil || !fi.IsDir() {
			return false
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok {
			return false
		}
		perm := fi.Mode().Perm()
		switch {
		case int(st.Uid) == uid:
			if perm&0o100 == 0 {
				return false
			}
		case int(st.Gid) == gid:
			if perm&0o010 == 0 {
				return false
			}
		default:
			if perm&0o001 == 0 {
				return false
			}
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return true
		}
		dir = parent
	}
}

// ---------------------------------------------------------------------------
// Postgres.

// Postgres is a private Postgres server started by StartPostgres.
type Postgres struct {
	bin     *pgBinaries
	dir     string // temp dir owned by the server's OS user; also the unix socket dir
	dataDir string
	logPath string
	db      string // database URL() points to
	fast    bool   // synchronous_commit=off (shared server only)

	mu   sync.Mutex
	port int
	proc *process
}

// StartPostgres starts a private Postgres server for this test only (for
// tests that stop and start it), with a database "quotad". It is stopped
// and its data deleted at cleanup. Like the shared server it runs with
// fsync=off and full_page_writes=off, but with synchronous_commit=on, so no
// acknowledged commit is lost by Stop, Crash or a kill.
func StartPostgres(tb testing.TB) *Postgres {
	tb.Helper()
	p, err := newPostgres("quotad", false)
	if err != nil {
		fail(tb, err)
	}
	tb.Cleanup(func() {
		if err := p.shutdown(syscall.SIGQUIT); err != nil { // data is discarded: immediate shutdown
			tb.Errorf("testenv: %v", err)
		}
	})
	return p
}

// newPostgres initdbs and starts a server and creates database db (unless it
// is "postgres"). fast turns synchronous_commit off.
func newPostgres(db string, fast bool) (*Postgres, error) {
	bin, err := postgresBinaries()
	if err != nil {
		return nil, err
	}
	dir, err := newDataDir("pg-", bin.uid, bin.gid)
	if err != nil {
		return nil, err
	}
	p := &Postgres{
		bin:     bin,
		dir:     dir,
		dataDir: filepath.Join(dir, "data"),
		logPath: filepath.Join(dir, "postgres.log"),
		db:      db,
		fast:    fast,
	}
	ok := false
	defer func() {
		if !ok {
			_ = p.shutdown(syscall.SIGQUIT)
		}
	}()
	initdb := exec.Command(filepath.Join(bin.dir, "initdb"),
		"-D", p.dataDir, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-locale",
		"--no-sync", "--no-instructions")
	initdb.Dir = dir
	initdb.SysProcAttr = &syscall.SysProcAttr{Credential: bin.cred}
	if out, err := initdb.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("initdb: %v\n%s", err, out)
	}
	for attempt := 1; ; attempt++ {
		if p.port, err = freePort(); err != nil {
			return nil, err
		}
		err = p.start()
		if err == nil {
			break
		}
		if attempt == startAttempts || !logContains(p.logPath, "Address already in use", "could not bind") {
			return nil, err
		}
	}
	if db != "postgres" {
		if err := p.exec(context.Background(), "CREATE DATABASE "+pgx.Identifier{db}.Sanitize()); err != nil {
			return nil, err
		}
	}
	ok = true
	return p, nil
}

// start runs the server on p.port and waits until it accepts connections.
func (p *Postgres) start() error {
	if p.proc != nil && !p.proc.exited() {
		return errors.New("postgres: already running")
	}
	// fsync=off and full_page_writes=off only matter if the OS crashes,
	// which tests do not simulate. synchronous_commit=off, however, acks a
	// commit before its WAL leaves Postgres' own memory, so a Crash (or a
	// kill) loses recent commits: only the shared server, which is never
	// crashed, uses it.
	syncCommit := "on"
	if p.fast {
		syncCommit = "off"
	}
	sockDir := p.dir
	if len(sockDir)+len("/.s.PGSQL.65535") > 100 { // sun_path holds 108 bytes
		sockDir = "" // TCP only
	}
	args := []string{
		"-D", p.dataDir,
		"-p", strconv.Itoa(p.port),
		"-k", sockDir,
		"-c", "listen_addresses=127.0.0.1",
		"-c", "fsync=off",
		"-c", "full_page_writes=off",
		"-c", "synchronous_commit=" + syncCommit,
		"-c", "max_connections=300",
		// Keep dynamic shared memory in the data dir instead of
		// /dev/shm/PostgreSQL.*, which a killed server would leak.
		"-c", "dynamic_shared_memory_type=mmap",
	}
	proc, err := spawn("postgres", filepath.Join(p.bin.dir, "postgres"), args, p.dir, p.logPath, p.bin.cred)
	if err != nil {
		return err
	}
	p.proc = proc
	deadline := time.Now().Add(readyTimeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		conn, cerr := pgx.Connect(ctx, p.urlFor("postgres"))
		if cerr == nil {
			_ = conn.Close(ctx)
			cancel()
			return nil
		}
		cancel()
		if proc.exited() {
			return fmt.Errorf("postgres exited during startup (%v)\n%s", proc.waitErr, logTail(p.logPath))
		}
		if time.Now().After(deadline) {
			_ = proc.stop(syscall.SIGQUIT, 5*time.Second)
			return fmt.Errorf("postgres on port %d not ready after %v: %v\n%s", p.port, readyTimeout, cerr, logTail(p.logPath))
		}
		select {
		case <-proc.done:
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// shutdown stops the server with sig and removes its directory.
func (p *Postgres) shutdown(sig syscall.Signal) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	var err error
	if p.proc != nil {
		err = p.proc.stop(sig, stopTimeout)
	}
	if rerr := os.RemoveAll(p.dir); rerr != nil && err == nil {
		err = rerr
	}
	return err
}

func (p *Postgres) urlFor(db string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", p.port, db)
}

func (p *Postgres) exec(ctx context.Context, sql string) error {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, p.urlFor("postgres"))
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, sql); err != nil {
		return fmt.Errorf("%s: %w", sql, err)
	}
	return nil
}

// URL returns the URL of the database "quotad" on this server.
func (p *Postgres) URL() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.urlFor(p.db)
}

// Port returns the server's TCP port.
func (p *Postgres) Port() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.port
}

// Stop stops the server with a fast shutdown (like pg_ctl stop -m fast:
// sessions are disconnected and a checkpoint is written). Data is kept for
// Start.
func (p *Postgres) Stop(tb testing.TB) {
	tb.Helper()
	p.stopWith(tb, syscall.SIGINT)
}

// Crash stops the server with an immediate shutdown (like pg_ctl stop -m
// immediate: no checkpoint), so the next Start runs crash recovery. Committed
// data survives (the OS page cache is not lost), even with fsync=off.
func (p *Postgres) Crash(tb testing.TB) {
	tb.Helper()
	p.stopWith(tb, syscall.SIGQUIT)
}

func (p *Postgres) stopWith(tb testing.TB, sig syscall.Signal) {
	tb.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.proc == nil || p.proc.exited() {
		tb.Fatalf("testenv: postgres on port %d is not running", p.port)
	}
	if err := p.proc.stop(sig, stopTimeout); err != nil {
		tb.Fatalf("testenv: %v\n%s", err, logTail(p.logPath))
	}
}

// Start restarts a stopped server on the same port and data directory and
// waits until it accepts connections.
func (p *Postgres) Start(tb testing.TB) {
	tb.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.start(); err != nil {
		tb.Fatalf("testenv: restart postgres on port %d: %v", p.port, err)
	}
}

// Shared Postgres server.

var sharedPG struct {
	mu    sync.Mutex
	pg    *Postgres
	err   error
	seq   int
	ended bool // Main has shut it down
}

func sharedPostgres() (*Postgres, error) {
	sharedPG.mu.Lock()
	defer sharedPG.mu.Unlock()
	if sharedPG.ended {
		return nil, errors.New("shared Postgres requested after testenv.Main shut it down")
	}
	if sharedPG.pg == nil && sharedPG.err == nil {
		// Start once; a failure is remembered so that every test reports it
		// instead of each waiting out its own startup timeout.
		sharedPG.pg, sharedPG.err = newPostgres("postgres", true)
	}
	return sharedPG.pg, sharedPG.err
}

var nonIdent = regexp.MustCompile(`[^a-z0-9_]+`)

// PostgresURL returns the URL of a fresh, empty database of its own on a
// Postgres server shared by the whole test binary. The server is started
// once, lazily, on a free port in a temp dir, with fsync, synchronous_commit
// and full_page_writes off and max_connections=300. The database is dropped
// (WITH (FORCE)) at cleanup.
func PostgresURL(tb testing.TB) string {
	tb.Helper()
	pg, err := sharedPostgres()
	if err != nil {
		fail(tb, err)
	}
	sharedPG.mu.Lock()
	sharedPG.seq++
	seq := sharedPG.seq
	sharedPG.mu.Unlock()
	name := fmt.Sprintf("t%d_%s", seq, nonIdent.ReplaceAllString(strings.ToLower(tb.Name()), "_"))
	if len(name) > 63 {
		name = name[:63]
	}
	ident := pgx.Identifier{name}.Sanitize()
	if err := pg.exec(context.Background(), "CREATE DATABASE "+ident); err != nil {
		tb.Fatalf("testenv: %v", err)
	}
	tb.Cleanup(func() {
		if err := pg.exec(context.Background(), "DROP DATABASE IF EXISTS "+ident+" WITH (FORCE)"); err != nil {
			tb.Errorf("testenv: %v", err)
		}
	})
	return pg.urlFor(name)
}

// ---------------------------------------------------------------------------
// Redis.

// RedisOptions configures StartRedis.
type RedisOptions struct {
	// AOF turns on the append-only file with appendfsync always, so data
	// survives Stop/Start and Kill/Start.
	AOF bool
}

// Redis is a redis-server started by StartRedis.
type Redis struct {
	bin     string
	dir     string
	logPath string
	opts    RedisOptions
	extra   []string

	mu   sync.Mutex
	port int
	proc *process
}

var (
	redisBinOnce sync.Once
	redisBin     string
	redisBinErr  error
)

func redisServerBinary() (string, error) {
	redisBinOnce.Do(func() {
		redisBin, redisBinErr = exec.LookPath("redis-server")
		if redisBinErr == nil {
			return
		}
		for _, p := range []string{"/usr/bin/redis-server", "/usr/local/bin/redis-server", "/usr/sbin/redis-server"} {
			if isExecutable(p) {
				redisBin, redisBinErr = p, nil
				return
			}
		}
		redisBinErr = &errUnavailable{"redis-server not found on PATH or in /usr/bin, /usr/local/bin (apt-get install -y redis-server)"}
	})
	return redisBin, redisBinErr
}

// StartRedis starts a private redis-server for this test on a free port with
// data in a temp dir and no RDB snapshots (--save ""). It is stopped and its
// data deleted at cleanup.
func StartRedis(tb testing.TB, opts RedisOptions) *Redis {
	tb.Helper()
	r, err := newRedis(opts)
	if err != nil {
		fail(tb, err)
	}
	tb.Cleanup(func() {
		if err := r.shutdown(); err != nil {
			tb.Errorf("testenv: %v", err)
		}
	})
	return r
}

func newRedis(opts RedisOptions, extra ...string) (*Redis, error) {
	bin, err := redisServerBinary()
	if err != nil {
		return nil, err
	}
	dir, err := newDataDir("redis-", -1, -1)
	if err != nil {
		return nil, err
	}
	r := &Redis{bin: bin, dir: dir, logPath: filepath.Join(dir, "redis.log"), opts: opts, extra: extra}
	for attempt := 1; ; attempt++ {
		if r.port, err = freePort(); err != nil {
			break
		}
		err = r.start()
		if err == nil || attempt == startAttempts || !logContains(r.logPath, "Address already in use") {
			break
		}
	}
	if err != nil {
		_ = r.shutdown()
		return nil, err
	}
	return r, nil
}

func (r *Redis) start() error {
	if r.proc != nil && !r.proc.exited() {
		return errors.New("redis-server: already running")
	}
	args := []string{
		"--port", strconv.Itoa(r.port),
		"--bind", "127.0.0.1",
		"--dir", r.dir,
		"--logfile", r.logPath,
		"--daemonize", "no",
		"--save", "",
		"--maxmemory-policy", "noeviction",
	}
	if r.opts.AOF {
		args = append(args, "--appendonly", "yes", "--appendfsync", "always")
	} else {
		args = append(args, "--appendonly", "no")
	}
	args = append(args, r.extra...)
	proc, err := spawn("redis-server", r.bin, args, r.dir, r.logPath, nil)
	if err != nil {
		return err
	}
	r.proc = proc
	deadline := time.Now().Add(readyTimeout)
	for {
		reply, perr := redisDo(r.addr(), time.Second, []string{"PING"})
		if perr == nil && reply == "+PONG" {
			return nil
		}
		if perr == nil {
			perr = errors.New(reply) // e.g. -LOADING while reading the AOF
		}
		if proc.exited() {
			return fmt.Errorf("redis-server exited during startup (%v)\n%s", proc.waitErr, logTail(r.logPath))
		}
		if time.Now().After(deadline) {
			_ = proc.stop(syscall.SIGKILL, 5*time.Second)
			return fmt.Errorf("redis-server on port %d not ready after %v: %v\n%s", r.port, readyTimeout, perr, logTail(r.logPath))
		}
		select {
		case <-proc.done:
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// stop stops the server (SIGTERM is Redis' graceful SHUTDOWN: the AOF is
// flushed and fsynced; with --save "" no RDB is written) or kills it, and
// waits until its port is closed.
func (r *Redis) stop(sig syscall.Signal) error {
	if r.proc == nil || r.proc.exited() {
		return fmt.Errorf("redis-server on port %d is not running", r.port)
	}
	if err := r.proc.stop(sig, stopTimeout); err != nil {
		return fmt.Errorf("%v\n%s", err, logTail(r.logPath))
	}
	// The listener closes with the process; double-check so that Start can
	// rebind the port at once.
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", r.addr(), time.Second)
		if err != nil {
			return nil
		}
		c.Close()
		if time.Now().After(deadline) {
			return fmt.Errorf("port %d still accepts connections after redis-server exited", r.port)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (r *Redis) shutdown() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	var err error
	if r.proc != nil {
		err = r.proc.stop(syscall.SIGKILL, stopTimeout) // data is discarded
	}
	if rerr := os.RemoveAll(r.dir); rerr != nil && err == nil {
		err = rerr
	}
	return err
}

func (r *Redis) addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(r.port)) }

// URL returns redis://127.0.0.1:port/0.
func (r *Redis) URL() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return "redis://" + r.addr() + "/0"
}

// Addr returns 127.0.0.1:port.
func (r *Redis) Addr() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.addr()
}

// Stop shuts the server down gracefully (with AOF on, data is kept for
// Start) and waits until its port is closed.
func (r *Redis) Stop(tb testing.TB) {
	tb.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.stop(syscall.SIGTERM); err != nil {
		tb.Fatalf("testenv: %v", err)
	}
}

// Kill kills the server with SIGKILL: nothing is saved beyond what the AOF
// already holds.
func (r *Redis) Kill(tb testing.TB) {
	tb.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.stop(syscall.SIGKILL); err != nil {
		tb.Fatalf("testenv: %v", err)
	}
}

// Start restarts a stopped server on the same port and dir and waits until
// it answers PING (i.e. has loaded its AOF).
func (r *Redis) Start(tb testing.TB) {
	tb.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.start(); err != nil {
		tb.Fatalf("testenv: restart redis-server on port %d: %v", r.port, err)
	}
}

// redisDo sends one command per element of cmds on a fresh connection and
// returns the first line of the last reply (e.g. "+OK", "-ERR ...", ":1").
func redisDo(addr string, timeout time.Duration, cmds ...[]string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(timeout))
	var b strings.Builder
	for _, cmd := range cmds {
		fmt.Fprintf(&b, "*%d\r\n", len(cmd))
		for _, a := range cmd {
			fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
		}
	}
	if _, err := c.Write([]byte(b.String())); err != nil {
		return "", err
	}
	rd := bufio.NewReader(c)
	var line string
	for range cmds {
		if line, err = rd.ReadString('\n'); err != nil {
			return "", err
		}
		line = strings.TrimRight(line, "\r\n")
		if strings.HasPrefix(line, "-") && len(cmds) > 1 {
			return line, nil
		}
	}
	return line, nil
}

// Shared redis-server.

var sharedRedis struct {
	mu    sync.Mutex
	r     *Redis
	err   error
	next  int   // next never-used DB index
	free  []int // flushed DB indexes ready for reuse
	ended bool
}

// RedisURL returns the URL of a logical Redis database of its own on a
// redis-server shared by the test binary (started with --databases 10000;
// each call gets a DB index no other live test has). The database is flushed
// at cleanup and its index reused.
//
// Isolation is per keyspace only: Pub/Sub channels, keyspace notifications,
// CONFIG SET, FLUSHALL, SCRIPT FLUSH and FUNCTION are server-wide. Tests that
// need those use StartRedis.
func RedisURL(tb testing.TB) string {
	tb.Helper()
	sharedRedis.mu.Lock()
	if sharedRedis.ended {
		sharedRedis.mu.Unlock()
		tb.Fatal("testenv: shared Redis requested after testenv.Main shut it down")
	}
	if sharedRedis.r == nil && sharedRedis.err == nil {
		sharedRedis.r, sharedRedis.err = newRedis(RedisOptions{}, "--databases", strconv.Itoa(redisDatabases))
		sharedRedis.next = 1 // leave DB 0 alone
	}
	r, err := sharedRedis.r, sharedRedis.err
	db := -1
	if err == nil {
		if n := len(sharedRedis.free); n > 0 {
			db = sharedRedis.free[n-1]
			sharedRedis.free = sharedRedis.free[:n-1]
		} else if sharedRedis.next < redisDatabases {
			db = sharedRedis.next
			sharedRedis.next++
		}
	}
	sharedRedis.mu.Unlock()
	if err != nil {
		fail(tb, err)
	}
	if db < 0 {
		tb.Fatalf("testenv: all %d shared Redis databases are in use", redisDatabases-1)
	}
	addr := r.Addr()
	tb.Cleanup(func() {
		reply, err := redisDo(addr, 30*time.Second, []string{"SELECT", strconv.Itoa(db)}, []string{"FLUSHDB"})
		if err == nil && reply != "+OK" {
			err = errors.New(reply)
		}
		if err != nil {
			tb.Errorf("testenv: FLUSHDB on shared Redis db %d: %v", db, err)
			return // do not reuse a db that may hold data
		}
		sharedRedis.mu.Lock()
		sharedRedis.free = append(sharedRedis.free, db)
		sharedRedis.mu.Unlock()
	})
	return fmt.Sprintf("redis://%s/%d", addr, db)
}

// ---------------------------------------------------------------------------

// shutdownAll stops the shared servers and any server still running.
func shutdownAll() {
	sharedPG.mu.Lock()
	sharedPG.ended = true
	pg := sharedPG.pg
	sharedPG.mu.Unlock()
	if pg != nil {
		if err := pg.shutdown(syscall.SIGINT); err != nil {
			fmt.Fprintf(os.Stderr, "testenv: stopping shared postgres: %v\n", err)
		}
	}

	sharedRedis.mu.Lock()
	sharedRedis.ended = true
	r := sharedRedis.r
	sharedRedis.mu.Unlock()
	if r != nil {
		if err := r.shutdown(); err != nil {
			fmt.Fprintf(os.Stderr, "testenv: stopping shared redis: %v\n", err)
		}
	}

	// Anything left (a server started outside a test's cleanup scope).
	live.Lock()
	var rest []*process
	for p := range live.procs {
		rest = append(rest, p)
	}
	live.Unlock()
	for _, p := range rest {
		_ = p.stop(syscall.SIGKILL, stopTimeout)
	}

	session.once.Do(func() {}) // no session dir from now on
	if session.dir != "" {
		if err := os.RemoveAll(session.dir); err != nil {
			fmt.Fprintf(os.Stderr, "testenv: %v\n", err)
		}
	}
}
