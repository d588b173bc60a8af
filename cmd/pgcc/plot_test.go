package main

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/pgcc/pgcc/internal/bench"
)

func TestPlotsPNG(t *testing.T) {
	t.Parallel()
	rep := &bench.Report{}
	rep.Config.Workloads = []bench.Workload{bench.Hot}
	rep.Config.Strategies = []bench.Strategy{bench.Optimistic, bench.Pessimistic}
	for _, w := range []int{1, 8, 32} {
		rep.Cells = append(rep.Cells,
			bench.Cell{Workload: bench.Hot, Strategy: bench.Optimistic, Workers: w, Goodput: 1000 / float64(w), P99: float64(w)},
			bench.Cell{Workload: bench.Hot, Strategy: bench.Pessimistic, Workers: w, Goodput: 900, P99: float64(w) / 2})
	}
	dir := t.TempDir()
	files, err := writePlots(rep, dir, "png")
	if err != nil || len(files) != 2 {
		t.Fatalf("files %v, err %v", files, err)
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil || !bytes.HasPrefix(b, []byte("\x89PNG\r\n\x1a\n")) {
			t.Errorf("%s is not a PNG (%v)", filepath.Base(f), err)
		}
	}
	if _, err := writePlots(rep, dir, "gif"); !errors.Is(err, bench.ErrInvalidConfig) {
		t.Errorf("gif: err = %v", err)
	}
}

func TestPlotsSingleStatementReference(t *testing.T) {
	t.Parallel()
	rep := &bench.Report{}
	rep.Config.Workloads = []bench.Workload{bench.Hot}
	rep.Config.Strategies = []bench.Strategy{bench.Combined, bench.Atomic}
	for _, w := range []int{8, 64} {
		rep.Cells = append(rep.Cells,
			bench.Cell{Workload: bench.Hot, Strategy: bench.Combined, Workers: w, Goodput: 5000, P99: 80, Pgbench: &bench.PgbenchResult{TPS: 120}},
			bench.Cell{Workload: bench.Hot, Strategy: bench.Atomic, Workers: w, Goodput: 160, P99: 900, Pgbench: &bench.PgbenchResult{TPS: 110}})
	}
	if ref := singleStatementReference(rep, bench.Hot); len(ref) != 2 || ref[0].X != 8 || ref[1].Y != 110 {
		t.Fatalf("reference = %v, want the atomic cells' pgbench tps at 8 and 64 workers", ref)
	}
	if files, err := writePlots(rep, t.TempDir(), "svg"); err != nil || len(files) != 2 {
		t.Fatalf("files %v, err %v", files, err)
	}
}
