package main

import (
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pgcc/pgcc/internal/pgtest"
	"github.com/pgcc/pgcc/internal/rttwork"
)

func TestParseBenchRTT(t *testing.T) {
	t.Parallel()
	ok := []struct {
		name  string
		args  []string
		check func(*benchOptions) bool
	}{
		{"defaults", []string{"-rtt", "0,500us,1ms"}, func(o *benchOptions) bool {
			r := o.rtt
			return slices.Equal(r.rtts, []time.Duration{0, 500 * time.Microsecond, time.Millisecond}) &&
				slices.Equal(r.workers, []int{1, 8}) && r.rows == rttwork.DefaultRows && r.rounds == 1 &&
				len(r.workloads) == len(rttwork.Workloads()) && o.cfg.Duration == 3*time.Second
		}},
		{"chosen", []string{"-rtt", "2ms, 0", "-workloads", "claim,advisory", "-workers", "2", "-rows", "100", "-ops", "5", "-rounds", "3"},
			func(o *benchOptions) bool {
				r := o.rtt
				return slices.Equal(r.rtts, []time.Duration{0, 2 * time.Millisecond}) && len(r.workloads) == 2 &&
					r.workloads[0].Name == "claim" && slices.Equal(r.workers, []int{2}) && r.rows == 100 && r.rounds == 3 &&
					o.cfg.Ops == 5 && o.cfg.Duration == 0
			}},
	}
	for _, tt := range ok {
		o, err := parseBench(tt.args, io.Discard)
		if err != nil || o.rtt == nil || !tt.check(o) {
			t.Errorf("%s: parseBench(%q) = %+v, %v", tt.name, tt.args, o, err)
		}
	}
	bad := []struct {
		args    []string
		wantErr string
	}{
		{[]string{"-rtt", "soon"}, `-rtt "soon"`},
		{[]string{"-rtt", "-1ms"}, "want 0 to"},
		{[]string{"-rtt", "2s"}, "want 0 to"},
		{[]string{"-rtt", "1ms,1ms"}, "given twice"},
		{[]string{"-rtt", " "}, "-rtt needs round-trip times"},
		{[]string{"-rounds", "3"}, "-rtt needs round-trip times"},
		{[]string{"-rtt", "1ms", "-rounds", "0"}, "-rounds 0"},
		{[]string{"-rtt", "1ms", "-strategies", "optimistic"}, "-strategies does not apply to -rtt"},
		{[]string{"-rtt", "1ms", "-from", "x.json"}, "-from does not apply"},
		{[]string{"-rtt", "1ms", "-workloads", "hot"}, `unknown -rtt workload "hot"`},
		{[]string{"-rtt", "1ms", "-workers", "0"}, "-workers"},
		{[]string{"-rtt", "1ms", "-duration", "0"}, "-duration"},
		{[]string{"-rtt", "1ms", "-plot-format", "gif"}, "-plot-format"},
	}
	for _, tt := range bad {
		_, err := parseBench(tt.args, io.Discard)
		if err == nil || !errors.Is(err, errUsage) || !strings.Contains(err.Error(), tt.wantErr) {
			t.Errorf("parseBench(%q): err = %v, want a usage error containing %q", tt.args, err, tt.wantErr)
		}
	}
}

// TestBenchRTT runs a tiny -rtt comparison end to end: the table, the JSON with the round trips the proxy
// counted (4 for hand-written pgx, 2 for every implementation that sends its last write with COMMIT, 2 for
// modify-pool), and a plot per workload and worker count.
func TestBenchRTT(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	// The command runs on its own pools, through its own proxy, then renders plots: nothing the watchdog sees.
	pgtest.Opaque(t, 5*time.Minute)
	dir := t.TempDir()
	jsonPath := filepath.Join(dir, "rtt.json")
	code, out, stderr := pgcc(t, "bench", "-dsn", db.DSN, "-rtt", "0,200us", "-workloads", "forupdate,modify-pool",
		"-workers", "1,2", "-rows", "50", "-ops", "8", "-json", jsonPath, "-plots", dir, "-quiet")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if !strings.Contains(out, "c=2, RTT 0.2ms") || !strings.Contains(out, "pgcc/pgx") {
		t.Errorf("table:\n%s", out)
	}
	raw, err := os.ReadFile(jsonPath)
	if err != nil {
		t.Fatal(err)
	}
	var rep rttReport
	if err := json.Unmarshal(raw, &rep); err != nil {
		t.Fatal(err)
	}
	if want := 2 * 2 * (5 + 2); len(rep.Cells) != want {
		t.Fatalf("%d cells, want %d", len(rep.Cells), want)
	}
	for _, c := range rep.Cells {
		want := 2.0
		switch {
		case c.Impl == rttwork.PGCC:
			want = c.RoundTrips // moved by other changes; the rtt integration test logs it
		case c.Impl == rttwork.PGX && c.Workload == "forupdate":
			want = 4
		}
		if c.Ops != 8 || c.Errors != 0 || c.OpsPerSec <= 0 || c.RoundTrips != want {
			t.Errorf("cell %+v: want 8 ops without errors at %v round trips each", c, want)
		}
	}
	// The report prints and plots again from its JSON, without a database.
	replot := filepath.Join(dir, "again")
	if code, out2, stderr := pgcc(t, "bench", "-from", jsonPath, "-plots", replot, "-plot-format", "svg"); code != 0 || out2 != out {
		t.Errorf("-from: exit %d, %s; table differs: %v", code, stderr, out2 != out)
	}
	if _, err := os.Stat(filepath.Join(replot, "rtt-modify-pool-c2.svg")); err != nil {
		t.Errorf("-from did not plot: %v", err)
	}
	for _, name := range []string{"rtt-forupdate-c1.png", "rtt-forupdate-c2.png", "rtt-modify-pool-c1.png", "rtt-modify-pool-c2.png"} {
		if b, err := os.ReadFile(filepath.Join(dir, name)); err != nil || !strings.HasPrefix(string(b), "\x89PNG") {
			t.Errorf("%s: not a PNG (%v)", name, err)
		}
	}
}
