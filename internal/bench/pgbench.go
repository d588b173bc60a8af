package bench

import (
	"bytes"
	"context"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgcc/pgcc/internal/secret"
)

// PgbenchResult is what pgbench reported for the script equivalent to a cell.
type PgbenchResult struct {
	// TPS is pgbench's committed transactions per second (without the initial connection time).
	TPS float64 `json:"tps"`
	// Failed counts transactions pgbench gave up on; Retried those it retried (serialization failures and
	// deadlocks, with --max-tries).
	Failed  int64 `json:"failed"`
	Retried int64 `json:"retried"`
	// Ratio is the pgcc cell's goodput divided by TPS: 1.0 means pgcc runs the workload as fast as the
	// C client sending the same statements.
	Ratio float64 `json:"ratio"`
	// Script is the pgbench script, for anyone who wants to run it by hand.
	Script string `json:"script"`
}

// pgbenchScript returns the pgbench script doing what strategy st does for workload w, or "" when pgbench
// cannot express it (the optimistic and NOWAIT retry loops: pgbench retries only serialization failures
// and deadlocks; the queue, which pgbench cannot drain and stop).
func (e *env) pgbenchScript(w Workload, st Strategy) string {
	it := pgx.Identifier{e.schema, "items"}.Sanitize()
	var b strings.Builder
	line := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	think := func() {
		if e.cfg.Think > 0 {
			line(`\sleep %d us`, e.cfg.Think.Microseconds())
		}
	}
	begin := func() {
		if st == Serializable {
			line("BEGIN ISOLATION LEVEL SERIALIZABLE;")
		} else {
			line("BEGIN;")
		}
	}
	forUpdate := ""
	if st == Pessimistic {
		// lock.Load's default strength: what the UPDATE that follows takes itself.
		forUpdate = " FOR NO KEY UPDATE"
	}
	switch st {
	case Naive, Pessimistic, Serializable, Advisory:
	case Combined, Atomic:
		return e.singleStatementScript(w)
	default:
		return ""
	}
	switch w {
	case Hot, Uniform, Zipf, Inventory:
		switch w {
		case Hot:
			line(`\set k 1`)
		case Uniform:
			line(`\set k random(1, %d)`, e.cfg.Rows)
		default:
			line(`\set k random_zipfian(1, %d, %g)`, e.cfg.Rows, e.cfg.Skew)
		}
		begin()
		if st == Advisory {
			line(`SELECT pg_advisory_xact_lock(:k);`)
		}
		line(`SELECT value FROM %s WHERE id = :k%s \gset`, it, forUpdate)
		think()
		if w == Inventory {
			line(`\if :value >= 1`)
			line(`UPDATE %s SET value = :value - 1, version = version + 1 WHERE id = :k;`, it)
			line(`\endif`)
		} else {
			line(`UPDATE %s SET value = :value + 1, version = version + 1 WHERE id = :k;`, it)
		}
		line("END;")
	case Bank:
		line(`\set a random(1, %d)`, e.cfg.Rows)
		line(`\set b random(1, %d)`, e.cfg.Rows-1)
		line(`\if :b >= :a`)
		line(`\set b :b + 1`)
		line(`\endif`)
		line(`\set amount random(1, 10)`)
		begin()
		if st == Advisory {
			line(`SELECT pg_advisory_xact_lock(least(:a::bigint, :b::bigint)), pg_advisory_xact_lock(greatest(:a::bigint, :b::bigint));`)
		}
		// One round trip reads (and for the pessimistic script locks, in key order) both rows, as lock.Load does.
		line(`SELECT max(value) FILTER (WHERE id = :a) AS va, max(value) FILTER (WHERE id = :b) AS vb FROM (SELECT id, value FROM %s WHERE id IN (:a, :b) ORDER BY id%s) r \gset`, it, forUpdate)
		think()
		line(`UPDATE %s SET value = :va::bigint - :amount::bigint, version = version + 1 WHERE id = :a;`, it)
		line(`UPDATE %s SET value = :vb::bigint + :amount::bigint, version = version + 1 WHERE id = :b;`, it)
		line("END;")
	default:
		return ""
	}
	return b.String()
}

// singleStatementScript is the reference of the hot-row strategies: each change as one autocommitted UPDATE
// that computes the new value in the server (bank: two in a transaction, in key order), the fastest a row can
// be changed with one commit per change.
func (e *env) singleStatementScript(w Workload) string {
	it := pgx.Identifier{e.schema, "items"}.Sanitize()
	var b strings.Builder
	line := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	switch w {
	case Hot:
		line(`\set k 1`)
	case Uniform:
		line(`\set k random(1, %d)`, e.cfg.Rows)
	case Zipf, Inventory:
		line(`\set k random_zipfian(1, %d, %g)`, e.cfg.Rows, e.cfg.Skew)
	case Bank:
		line(`\set a random(1, %d)`, e.cfg.Rows)
		line(`\set b random(1, %d)`, e.cfg.Rows-1)
		line(`\if :b >= :a`)
		line(`\set b :b + 1`)
		line(`\endif`)
		line(`\set amount random(1, 10)`)
		line("BEGIN;")
		line(`UPDATE %s SET value = value - CASE WHEN id = :a THEN :amount ELSE -:amount END, version = version + 1 WHERE id = least(:a, :b);`, it)
		line(`UPDATE %s SET value = value - CASE WHEN id = :a THEN :amount ELSE -:amount END, version = version + 1 WHERE id = greatest(:a, :b);`, it)
		line("END;")
		return b.String()
	default:
		return ""
	}
	if w == Inventory {
		line(`UPDATE %s SET value = value - 1, version = version + 1 WHERE id = :k AND value - 1 >= 0;`, it)
	} else {
		line(`UPDATE %s SET value = value + 1, version = version + 1 WHERE id = :k;`, it)
	}
	return b.String()
}

// pgbenchCommand returns the command running pgbench with args against dsn. The password, if dsn has one,
// goes in the child's environment (PGPASSWORD), never on its command line, which every user of the machine
// can read.
func pgbenchCommand(ctx context.Context, bin, dsn string, args []string) (*exec.Cmd, error) {
	stripped, password, err := secret.WithoutPassword(dsn)
	if err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, bin, append(args, stripped)...)
	if password != "" {
		cmd.Env = append(os.Environ(), "PGPASSWORD="+password)
	}
	// On cancellation pgbench gets SIGINT, which it handles by stopping its clients, and is killed if it has
	// not exited a little later.
	cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
	cmd.WaitDelay = 500 * time.Millisecond
	return cmd, nil
}

var (
	tpsRE     = regexp.MustCompile(`(?m)^tps = ([0-9.]+) \(without initial connection time\)`)
	failedRE  = regexp.MustCompile(`(?m)^number of failed transactions: (\d+)`)
	retriedRE = regexp.MustCompile(`(?m)^number of transactions retried: (\d+)`)
)

// runPgbench runs script with clients connections for the cell's duration (or its operation count) against
// dsn. The tables must have been reset.
func (e *env) runPgbench(ctx context.Context, dsn, script string, clients int) (*PgbenchResult, error) {
	dir, err := os.MkdirTemp("", "pgcc-pgbench-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "script.sql")
	if err := os.WriteFile(path, []byte(script), 0o600); err != nil {
		return nil, err
	}
	args := []string{"-n", "-M", "prepared", "-f", path, "-c", strconv.Itoa(clients),
		"-j", strconv.Itoa(min(clients, 2)), "--max-tries", strconv.Itoa(e.cfg.MaxAttempts)}
	if e.cfg.Ops > 0 {
		args = append(args, "-t", strconv.Itoa(max(1, e.cfg.Ops/clients)))
	} else {
		args = append(args, "-T", strconv.Itoa(max(1, int(math.Round(e.cfg.Duration.Seconds())))))
	}
	cmd, err := pgbenchCommand(ctx, e.cfg.Pgbench, dsn, args)
	if err != nil {
		return nil, err
	}
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if i := strings.LastIndexByte(msg, '\n'); i >= 0 {
			msg = msg[i+1:]
		}
		return nil, fmt.Errorf("pgbench: %w: %s", err, msg)
	}
	res := &PgbenchResult{Script: script}
	m := tpsRE.FindStringSubmatch(out.String())
	if m == nil {
		return nil, fmt.Errorf("pgbench: no tps in its output: %q", out.String())
	}
	res.TPS, _ = strconv.ParseFloat(m[1], 64)
	if m := failedRE.FindStringSubmatch(out.String()); m != nil {
		res.Failed, _ = strconv.ParseInt(m[1], 10, 64)
	}
	if m := retriedRE.FindStringSubmatch(out.String()); m != nil {
		res.Retried, _ = strconv.ParseInt(m[1], 10, 64)
	}
	return res, nil
}
