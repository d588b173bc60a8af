package main

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/xml"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgcc/pgcc/internal/bench"
	"github.com/pgcc/pgcc/internal/pgbouncer"
	"github.com/pgcc/pgcc/internal/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

func noEnv(string) string { return "" }

// pgcc runs the command as a user would and returns its exit status and outputs.
func pgcc(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	return pgccWithin(t, 2*time.Minute, args...)
}

// pgccWithin is pgcc with the command's context ending after limit instead of two minutes.
func pgccWithin(t *testing.T, limit time.Duration, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	code = run(ctx, args, &out, &errOut, noEnv)
	return code, out.String(), errOut.String()
}

func TestParseBench(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		args    []string
		wantErr string
		check   func(*benchOptions) bool
	}{
		{name: "defaults", args: nil, check: func(o *benchOptions) bool {
			return len(o.cfg.Workloads) == 6 && len(o.cfg.Strategies) == 6 && len(o.cfg.Workers) == 3 && o.cfg.Duration == 3*time.Second
		}},
		{name: "lists", args: []string{"-workloads", "hot, bank", "-strategies", "optimistic,pessimistic", "-workers", "1,8,32,64"},
			check: func(o *benchOptions) bool {
				return len(o.cfg.Workloads) == 2 && o.cfg.Workloads[1] == bench.Bank && len(o.cfg.Workers) == 4 && o.cfg.Workers[3] == 64
			}},
		{name: "ops replaces duration", args: []string{"-ops", "500"}, check: func(o *benchOptions) bool {
			return o.cfg.Ops == 500 && o.cfg.Duration == 0
		}},
		{name: "think and pgbench off", args: []string{"-think", "1ms", "-pgbench", "off"}, check: func(o *benchOptions) bool {
			return o.cfg.Think == time.Millisecond && o.cfg.Pgbench == ""
		}},
		{name: "clients", args: []string{"-clients", "2"}, check: func(o *benchOptions) bool { return o.cfg.Clients == 2 }},
		{name: "clients huge", args: []string{"-clients", "1000"}, wantErr: "clients"},
		{name: "svg", args: []string{"-plot-format", "svg"}, check: func(o *benchOptions) bool { return o.plotFormat == "svg" }},
		{name: "unknown workload", args: []string{"-workloads", "hot,lukewarm"}, wantErr: `unknown workload "lukewarm"`},
		{name: "unknown strategy", args: []string{"-strategies", "yolo"}, wantErr: `unknown strategy "yolo"`},
		{name: "bad workers", args: []string{"-workers", "1,x"}, wantErr: "workers"},
		{name: "zero workers", args: []string{"-workers", "0"}, wantErr: "workers"},
		{name: "skew", args: []string{"-skew", "0.5"}, wantErr: "skew"},
		{name: "skew +Inf", args: []string{"-skew", "+Inf"}, wantErr: "skew"},
		{name: "skew NaN", args: []string{"-skew", "NaN"}, wantErr: "skew"},
		{name: "skew -Inf", args: []string{"-skew", "-Inf"}, wantErr: "skew"},
		{name: "skew huge", args: []string{"-skew", "1e300"}, wantErr: "skew"},
		{name: "ops huge", args: []string{"-ops", "9223372036854775807"}, wantErr: "ops"},
		{name: "duration huge", args: []string{"-duration", "9000h"}, wantErr: "duration"},
		{name: "attempts huge", args: []string{"-max-attempts", "2000000000"}, wantErr: "max attempts"},
		{name: "stock huge", args: []string{"-stock", "9223372036854775807"}, wantErr: "stock"},
		{name: "rows", args: []string{"-rows", "1"}, wantErr: "rows 1"},
		{name: "negative think", args: []string{"-think", "-1ms"}, wantErr: "think"},
		{name: "no duration", args: []string{"-duration", "0"}, wantErr: "duration"},
		{name: "bad backoff", args: []string{"-backoff-base", "1s", "-backoff-cap", "1ms"}, wantErr: "backoff"},
		{name: "plot format", args: []string{"-plot-format", "gif"}, wantErr: "plot-format"},
		{name: "missing pgbench", args: []string{"-pgbench", "/nonexistent/pgbench"}, wantErr: "-pgbench"},
		{name: "unknown flag", args: []string{"-colour"}, wantErr: "flag provided but not defined: -colour"},
		{name: "bad duration", args: []string{"-duration", "soon"}, wantErr: "invalid value"},
		{name: "stray argument", args: []string{"extra"}, wantErr: `unexpected argument "extra"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o, err := parseBench(tt.args, io.Discard)
			if tt.wantErr != "" {
				if err == nil || !errors.Is(err, errUsage) || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want a usage error containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || !tt.check(o) {
				t.Fatalf("parseBench(%q) = %+v, %v", tt.args, o, err)
			}
		})
	}
}

func TestParseDemoAndLocks(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		parse   func([]string, io.Writer) error
		args    []string
		wantErr string
	}{
		{"demo defaults", demoParser, nil, ""},
		{"demo small", demoParser, []string{"-workers", "4", "-ops", "40", "-think", "0"}, ""},
		{"demo one worker", demoParser, []string{"-workers", "1"}, "cannot race"},
		{"demo ops", demoParser, []string{"-ops", "0"}, "-ops 0"},
		{"demo think", demoParser, []string{"-think", "2s"}, "-think"},
		{"demo exec mode", demoParser, []string{"-exec-mode", "exec"}, ""},
		{"demo bad exec mode", demoParser, []string{"-exec-mode", "prepared"}, "-exec-mode"},
		{"locks defaults", locksParser, nil, ""},
		{"locks watch", locksParser, []string{"-watch", "2s", "-count", "3", "-all"}, ""},
		{"locks fast watch", locksParser, []string{"-watch", "1ms"}, "-watch"},
		{"locks width", locksParser, []string{"-width", "-3"}, "-width"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.parse(tt.args, io.Discard)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !errors.Is(err, errUsage) || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("err = %v, want a usage error containing %q", err, tt.wantErr)
			}
		})
	}
}

func demoParser(a []string, w io.Writer) error  { _, err := parseDemo(a, w); return err }
func locksParser(a []string, w io.Writer) error { _, err := parseLocks(a, w); return err }

// TestUsageErrors checks what a user sees: one line on stderr, exit status 2 for bad usage, 1 for a database
// that does not answer, 0 and the flags for -h.
func TestUsageErrors(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		args     []string
		code     int
		contains string
	}{
		{nil, 2, "usage: pgcc <command>"},
		{[]string{"frobnicate"}, 2, `unknown command "frobnicate"`},
		{[]string{"bench", "-workers", "abc"}, 2, "pgcc bench: "},
		{[]string{"demo", "-workers", "1"}, 2, "pgcc demo: "},
		{[]string{"bench", "-dsn", "postgres://postgres@127.0.0.1:1/none?connect_timeout=2", "-pgbench", "off"}, 1, "cannot reach the database"},
		{[]string{"locks", "-dsn", "not a dsn ==="}, 1, "bad connection string"},
		// A mistyped scheme: the message must not show the password, not even the part after an '@' in it.
		{[]string{"demo", "-dsn", "postgresql+psycopg://app:s3cr@t@127.0.0.1/db"}, 1, "cannot parse the connection string"},
		{[]string{"bench", "-dsn", "host=127.0.0.1 password='s3cr@t' port=abc", "-pgbench", "off"}, 1, "cannot parse the connection string"},
	} {
		code, _, stderr := pgcc(t, tt.args...)
		if code != tt.code || !strings.Contains(stderr, tt.contains) {
			t.Errorf("pgcc %q: exit %d, stderr %q; want exit %d containing %q", tt.args, code, stderr, tt.code, tt.contains)
		}
		if tt.code == 1 && strings.Count(strings.TrimSpace(stderr), "\n") != 0 {
			t.Errorf("pgcc %q: error is not one line: %q", tt.args, stderr)
		}
		if strings.Contains(stderr, "goroutine ") || strings.Contains(stderr, "panic") {
			t.Errorf("pgcc %q: stack trace on stderr: %q", tt.args, stderr)
		}
		if strings.Contains(stderr, "s3cr") || strings.Contains(stderr, "cr@t") {
			t.Errorf("pgcc %q: stderr shows the password: %q", tt.args, stderr)
		}
	}
	code, _, stderr := pgcc(t, "bench", "-h")
	if code != 0 || !strings.Contains(stderr, "-workloads") {
		t.Errorf("bench -h: exit %d, stderr %q", code, stderr)
	}
}

// TestDemo runs a small demo end to end and checks the table: naive may lose updates, no strategy may.
func TestDemo(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	pgtest.Opaque(t, 5*time.Minute) // the command works on its own pool, unseen by the watchdog
	code, out, stderr := pgcc(t, "demo", "-dsn", db.DSN, "-workers", "4", "-ops", "60", "-think", "1ms")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	for _, st := range []string{"naive", "optimistic", "pessimistic", "nowait", "serializable", "advisory"} {
		var line string
		for _, l := range strings.Split(out, "\n") {
			if strings.HasPrefix(l, st+" ") {
				line = l
				break
			}
		}
		if line == "" {
			t.Fatalf("no %s line in:\n%s", st, out)
		}
		if st != "naive" && !strings.HasSuffix(strings.TrimSpace(line), "exact") {
			t.Errorf("%s: %q, want exact", st, line)
		}
	}
}

// TestDemoThroughPgBouncer points the demo at a PgBouncer, as a user would, under each exec mode that can work
// there: in transaction mode with -exec-mode auto (the pooler found, cache_describe used), exec and
// simple_protocol; in session mode with auto and pgx's default cache_statement. Every strategy ends exact and
// the command exits 0. Forced to cache_statement through transaction pooling it fails (42P05/26000) and says
// so with exit 1.
func TestDemoThroughPgBouncer(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		pool     pgbouncer.PoolMode
		execMode string
		wantCode int
	}{
		{pgbouncer.TransactionMode, "auto", 0},
		{pgbouncer.TransactionMode, "exec", 0},
		{pgbouncer.TransactionMode, "simple_protocol", 0},
		{pgbouncer.TransactionMode, "cache_statement", 1},
		{pgbouncer.SessionMode, "auto", 0},
		{pgbouncer.SessionMode, "cache_statement", 0},
	} {
		t.Run(string(tc.pool)+"/"+tc.execMode, func(t *testing.T) {
			t.Parallel()
			db := pgtest.NewDB(t)
			pgtest.Opaque(t, 5*time.Minute) // the command works on its own pool, unseen by the watchdog
			cfg, err := pgx.ParseConfig(db.DSN)
			if err != nil {
				t.Fatal(err)
			}
			// Session mode needs a server connection per client connection: the demo's 4 workers plus two.
			size := 3
			if tc.pool == pgbouncer.SessionMode {
				size = 6
			}
			b := pgbouncer.Start(t, pgbouncer.Config{ServerHost: cfg.Host, ServerPort: int(cfg.Port), PoolMode: tc.pool, PoolSize: size})
			code, out, stderr := pgcc(t, "demo", "-dsn", b.DSN(db.Name), "-workers", "4", "-ops", "40", "-think", "1ms", "-exec-mode", tc.execMode)
			if code != tc.wantCode {
				t.Fatalf("exit %d, want %d; stderr %q\n%s", code, tc.wantCode, stderr, out)
			}
			if tc.wantCode != 0 {
				t.Logf("refused: %q", stderr)
				return
			}
			if tc.execMode == "auto" && !strings.Contains(stderr, "behind a connection pooler") {
				t.Errorf("auto did not notice the pooler: %q", stderr)
			}
			for _, st := range []string{"optimistic", "pessimistic", "nowait", "serializable", "advisory"} {
				for _, l := range strings.Split(out, "\n") {
					if strings.HasPrefix(l, st+" ") { // the table's row, before the explanations
						if !strings.HasSuffix(strings.TrimSpace(l), "exact") {
							t.Errorf("%s: %q, want exact", st, l)
						}
						break
					}
				}
			}
		})
	}
}

// TestBench runs a two-second bench on small sizes and checks the report: invariant column, JSON, plots.
func TestBench(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	// The command runs on its own pool and then renders plots: nothing the watchdog sees as progress.
	pgtest.Opaque(t, 5*time.Minute)
	dir := t.TempDir()
	jsonPath := filepath.Join(dir, "report.json")
	// 18 cells and their pgbench twins took 37 s beside a fault run; a more loaded machine (the whole suite
	// -count=5 beside two fault runs) took past two minutes. The bound is the watchdog's, less a margin.
	code, out, stderr := pgccWithin(t, 4*time.Minute, "bench", "-dsn", db.DSN, "-workloads", "hot,bank,queue", "-strategies", "naive,optimistic,pessimistic",
		"-workers", "1,4", "-rows", "50", "-ops", "40", "-think", "0", "-json", jsonPath, "-plots", dir, "-plot-format", "svg", "-quiet")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if !strings.Contains(out, "violations") || !strings.Contains(out, "balance units misplaced") {
		t.Errorf("table lacks the invariant columns:\n%s", out)
	}
	raw, err := os.ReadFile(jsonPath)
	if err != nil {
		t.Fatal(err)
	}
	var rep bench.Report
	if err := json.Unmarshal(raw, &rep); err != nil {
		t.Fatalf("report.json: %v", err)
	}
	if len(rep.Cells) != 3*3*2 {
		t.Fatalf("cells = %d, want 18", len(rep.Cells))
	}
	for _, c := range rep.Cells {
		if c.Ops == 0 || c.Goodput <= 0 || c.Invariant == "" {
			t.Errorf("cell %+v: empty measurement", c)
		}
		if c.Strategy != bench.Naive && (c.Violations != 0 || len(c.Errors) != 0) {
			t.Errorf("cell %s/%s×%d: violations %d, errors %v", c.Workload, c.Strategy, c.Workers, c.Violations, c.Errors)
		}
	}
	// The report plots again from its JSON, without a database.
	replot := filepath.Join(dir, "again")
	if code, out2, stderr := pgcc(t, "bench", "-from", jsonPath, "-plots", replot); code != 0 || out2 != out {
		t.Errorf("-from: exit %d, %s; table differs: %v", code, stderr, out2 != out)
	}
	if b, err := os.ReadFile(filepath.Join(replot, "bank-p99.png")); err != nil || !strings.HasPrefix(string(b), "\x89PNG") {
		t.Errorf("-from did not write bank-p99.png: %v", err)
	}
	if code, _, stderr := pgcc(t, "bench", "-from", filepath.Join(dir, "bank-p99.svg")); code != 1 || !strings.Contains(stderr, "read report") {
		t.Errorf("-from on a non-report: exit %d, %q", code, stderr)
	}
	for _, w := range []string{"hot", "bank", "queue"} {
		for _, m := range []string{"throughput", "p99"} {
			f, err := os.Open(filepath.Join(dir, w+"-"+m+".svg"))
			if err != nil {
				t.Fatal(err)
			}
			dec := xml.NewDecoder(f)
			for {
				if _, err := dec.Token(); err != nil {
					if err != io.EOF {
						t.Errorf("%s-%s.svg is not well-formed XML: %v", w, m, err)
					}
					break
				}
			}
			f.Close()
		}
	}
}

// TestLocksOnce runs the inspector once against the test database.
func TestLocksOnce(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	pgtest.Opaque(t, 5*time.Minute) // the command works on its own pool, unseen by the watchdog
	code, out, stderr := pgcc(t, "locks", "-dsn", db.DSN, "-watch", "100ms", "-count", "2")
	if code != 0 || strings.Count(out, "waiting for a lock")+strings.Count(out, "session(s) waiting") < 2 {
		t.Fatalf("exit %d, out %q, stderr %q", code, out, stderr)
	}
}

func TestVerdict(t *testing.T) {
	t.Parallel()
	ok := bench.Cell{Workload: bench.Hot, Strategy: bench.Optimistic, Workers: 8, Ops: 10}
	naiveLost := bench.Cell{Workload: bench.Hot, Strategy: bench.Naive, Workers: 8, Ops: 10, Violations: 7, Errors: map[string]int64{"x": 1}}
	failed := bench.Cell{Workload: bench.Hot, Strategy: bench.NoWait, Workers: 8, Ops: 9,
		Errors: map[string]int64{"retries_exhausted": 3}, ErrorSample: "pgcc: gave up after 10 attempts"}
	broken := bench.Cell{Workload: bench.Bank, Strategy: bench.Pessimistic, Workers: 8, Violations: 2, Invariant: "units of balance"}
	for _, tc := range []struct {
		cells    []bench.Cell
		tolerate bool
		want     string
	}{
		{[]bench.Cell{ok, naiveLost}, false, ""},
		{[]bench.Cell{ok, failed}, false, "3 pgcc operations failed (first: hot/nowait ×8: pgcc: gave up after 10 attempts)"},
		{[]bench.Cell{ok, failed}, true, ""},
		{[]bench.Cell{failed, broken}, true, "invariant broken: bank/pessimistic ×8 has 2 units of balance"},
	} {
		err := verdict(&bench.Report{Cells: tc.cells}, tc.tolerate)
		got := ""
		if err != nil {
			got = err.Error()
		}
		if got != tc.want {
			t.Errorf("verdict = %q, want %q", got, tc.want)
		}
	}
}

// TestSignalStopsTheCommandWithinASecond runs the built command on a long benchmark and sends it SIGTERM:
// it must exit, non-zero, within a second, whatever it was doing.
func TestSignalStopsTheCommandWithinASecond(t *testing.T) {
	t.Parallel()
	bin := filepath.Join(t.TempDir(), "pgcc")
	build := exec.Command("go", "build", "-o", bin, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	db := pgtest.NewDB(t)
	pgtest.Opaque(t, 5*time.Minute) // the command works on its own pool, unseen by the watchdog
	for _, sig := range []os.Signal{syscall.SIGTERM, os.Interrupt} {
		cmd := exec.Command(bin, "bench", "-dsn", db.DSN, "-workloads", "hot", "-strategies", "optimistic",
			"-workers", "4", "-duration", "1h", "-pgbench", "off", "-quiet")
		stderr := &lockedBuffer{}
		cmd.Stderr = stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// Wait until the benchmark is running: it reports the database it uses first.
		deadline := time.Now().Add(30 * time.Second)
		for !strings.Contains(stderr.String(), "database from") && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		time.Sleep(300 * time.Millisecond)
		sent := time.Now()
		if err := cmd.Process.Signal(sig); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			took := time.Since(sent)
			if err == nil {
				t.Errorf("%v: exit status 0 after being interrupted", sig)
			}
			if took > 1500*time.Millisecond {
				t.Errorf("%v: exited %v after the signal; want within a second", sig, took)
			}
			t.Logf("%v: exited %v after the signal: %v", sig, took.Round(time.Millisecond), err)
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
			t.Fatalf("%v: still running 10s after the signal; stderr: %s", sig, stderr.String())
		}
	}
}

// lockedBuffer is a bytes.Buffer a child process writes to while the test reads it.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
