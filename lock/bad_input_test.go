package lock_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgcc/pgcc"
	"github.com/pgcc/pgcc/lock"
	"github.com/pgcc/pgcc/repo"
)

// TestBadTablesRefused: descriptions PostgreSQL would not keep as given (a NUL byte, more than 63 bytes,
// empty, bad UTF-8, too many name parts, a key column twice) and nil tables, typed nils included, are refused
// with ErrInvalidArgument naming the problem, before anything is sent and without a panic.
func TestBadTablesRefused(t *testing.T) {
	t.Parallel()
	pool := setup(t, 1)
	ctx := context.Background()
	long := strings.Repeat("x", 64)
	var nilDef *lock.TableDef[item]
	var nilRepo *repo.Table[item]
	inTx(t, pool, func(tx pgx.Tx) {
		for name, tbl := range map[string]lock.Table{
			"NUL in the name":      table{name: pgx.Identifier{"ite\x00ms"}, keys: []string{"id"}, cols: []string{"id"}},
			"64-byte name":         table{name: pgx.Identifier{long}, keys: []string{"id"}, cols: []string{"id"}},
			"64-byte schema":       table{name: pgx.Identifier{long, "items"}, keys: []string{"id"}, cols: []string{"id"}},
			"empty name":           table{name: pgx.Identifier{""}, keys: []string{"id"}, cols: []string{"id"}},
			"no name":              table{keys: []string{"id"}, cols: []string{"id"}},
			"four parts":           table{name: pgx.Identifier{"a", "b", "c", "d"}, keys: []string{"id"}, cols: []string{"id"}},
			"bad UTF-8":            table{name: pgx.Identifier{"it\xffems"}, keys: []string{"id"}, cols: []string{"id"}},
			"NUL in a key column":  table{name: pgx.Identifier{"items"}, keys: []string{"i\x00d"}, cols: []string{"id"}},
			"64-byte key column":   table{name: pgx.Identifier{"items"}, keys: []string{long}, cols: []string{"id"}},
			"no key columns":       table{name: pgx.Identifier{"items"}, cols: []string{"id"}},
			"key column twice":     table{name: pgx.Identifier{"items"}, keys: []string{"id", "id"}, cols: []string{"id"}},
			"nil interface":        nil,
			"typed nil TableDef":   nilDef,
			"typed nil repo.Table": nilRepo,
		} {
			err := lock.Row(ctx, tx, tbl, pgcc.Key{1})
			if !errors.Is(err, pgcc.ErrInvalidArgument) {
				t.Errorf("%s: %v, want ErrInvalidArgument", name, err)
			}
			if _, err := lock.Rows(ctx, tx, tbl, []pgcc.Key{{1}, {2}}); !errors.Is(err, pgcc.ErrInvalidArgument) {
				t.Errorf("%s (Rows): %v, want ErrInvalidArgument", name, err)
			}
		}
		badCols := badTable[item]{table{name: pgx.Identifier{"items"}, keys: []string{"id"}, cols: []string{"id", "n\x00"}}}
		if _, err := lock.Load(ctx, tx, badCols, []pgcc.Key{{1}}); !errors.Is(err, pgcc.ErrInvalidArgument) {
			t.Errorf("NUL in a select column: %v", err)
		}
		if _, err := lock.Claim(ctx, tx, nilDef, 1); !errors.Is(err, pgcc.ErrInvalidArgument) {
			t.Errorf("Claim on a typed nil: %v", err)
		}
		if _, err := lock.Select(ctx, tx, nilRepo); !errors.Is(err, pgcc.ErrInvalidArgument) {
			t.Errorf("Select on a typed nil repo.Table: %v", err)
		}
		if n := queryInt(t, tx, "SELECT 1"); n != 1 {
			t.Error("transaction unusable: something was sent")
		}
	})
	// Two names longer than 63 bytes that PostgreSQL would truncate to one table are both refused.
	for _, name := range []string{long + "a", long + "b"} {
		if _, err := lock.NewTable[item](name); !errors.Is(err, pgcc.ErrInvalidArgument) || !strings.Contains(err.Error(), "63 bytes") {
			t.Errorf("NewTable(%d bytes) = %v", len(name), err)
		}
	}
	for name, f := range map[string]func() error{
		"not a struct":  func() error { _, err := lock.NewTable[int]("items"); return err },
		"no key field":  func() error { _, err := lock.NewTable[item]("items", lock.WithKey("owner")); return err },
		"empty WithKey": func() error { _, err := lock.NewTable[item]("items", lock.WithKey()); return err },
		"WithKey twice": func() error {
			_, err := lock.NewTable[item]("items", lock.WithKey("id"), lock.WithKey("n"))
			return err
		},
		"InSchema empty":    func() error { _, err := lock.NewTable[item]("items", lock.InSchema("")); return err },
		"nil table option":  func() error { _, err := lock.NewTable[item]("items", nil); return err },
		"NUL in the schema": func() error { _, err := lock.NewTable[item]("items", lock.InSchema("pub\x00lic")); return err },
	} {
		if err := f(); !errors.Is(err, pgcc.ErrInvalidArgument) {
			t.Errorf("NewTable, %s: %v, want ErrInvalidArgument", name, err)
		}
	}
}

// TestNilHandlesRefused: a nil transaction, typed nils included, a nil pool and a typed nil diagnostics handle
// are refused with ErrInvalidArgument, never a panic.
func TestNilHandlesRefused(t *testing.T) {
	t.Parallel()
	pool := setup(t, 1)
	ctx := context.Background()
	var typedNilTx *pgxpool.Tx
	var nilPool *pgxpool.Pool
	for name, tx := range map[string]pgx.Tx{"nil": nil, "typed nil": typedNilTx} {
		checks := map[string]error{
			"Row":         lock.Row(ctx, tx, itemsTable(), pgcc.Key{1}),
			"Rows":        second(lock.Rows(ctx, tx, itemsTable(), []pgcc.Key{{1}})),
			"Load":        second(lock.Load(ctx, tx, itemsTable(), []pgcc.Key{{1}})),
			"Select":      second(lock.Select(ctx, tx, itemsTable())),
			"Claim":       second(lock.Claim(ctx, tx, itemsTable(), 1)),
			"XactLock":    lock.XactLock(ctx, tx, 1),
			"TryXactLock": second(lock.TryXactLock(ctx, tx, 1)),
		}
		for call, err := range checks {
			if !errors.Is(err, pgcc.ErrInvalidArgument) {
				t.Errorf("%s on a %s tx: %v, want ErrInvalidArgument", call, name, err)
			}
		}
	}
	if _, err := lock.SessionLock(ctx, nilPool, 1); !errors.Is(err, pgcc.ErrInvalidArgument) {
		t.Errorf("SessionLock(nil pool) = %v", err)
	}
	if _, _, err := lock.TrySessionLock(ctx, nilPool, 1); !errors.Is(err, pgcc.ErrInvalidArgument) {
		t.Errorf("TrySessionLock(nil pool) = %v", err)
	}
	var nilHeld *lock.Held
	if err := nilHeld.Release(ctx); !errors.Is(err, pgcc.ErrInvalidArgument) {
		t.Errorf("Release of a nil Held = %v", err)
	}
	inTx(t, pool, func(tx pgx.Tx) {
		if err := lock.Row(ctx, tx, itemsTable(), pgcc.Key{1}, lock.WithDiagnostics(nilPool)); !errors.Is(err, pgcc.ErrInvalidArgument) {
			t.Errorf("WithDiagnostics(typed nil) = %v", err)
		}
	})
}

func second[A any](_ A, err error) error { return err }

// TestContradictoryOptionsRefused: an option given twice with different values is refused, never decided by
// the last one; the same option twice with the same value is accepted.
func TestContradictoryOptionsRefused(t *testing.T) {
	t.Parallel()
	pool := setup(t, 3)
	other := setup(t, 0)
	ctx := context.Background()
	inTx(t, pool, func(tx pgx.Tx) {
		for name, err := range map[string]error{
			"NoWait then SkipLocked":  lock.Row(ctx, tx, itemsTable(), pgcc.Key{1}, lock.WithWait(lock.NoWait), lock.WithWait(lock.SkipLocked)),
			"two strengths":           lock.Row(ctx, tx, itemsTable(), pgcc.Key{1}, lock.WithStrength(lock.ForUpdate), lock.WithStrength(lock.ForShare)),
			"two timeouts":            lock.Row(ctx, tx, itemsTable(), pgcc.Key{1}, lock.WithTimeout(time.Second), lock.WithTimeout(2*time.Second)),
			"two diagnostics handles": lock.Row(ctx, tx, itemsTable(), pgcc.Key{1}, lock.WithDiagnostics(pool), lock.WithDiagnostics(other)),
			"two Where":               second(lock.Select(ctx, tx, itemsTable(), lock.Where("id > 1"), lock.Where("id < 3"))),
			"two OrderBy":             second(lock.Select(ctx, tx, itemsTable(), lock.OrderBy("id"), lock.OrderBy("n"))),
			"two limits":              second(lock.Select(ctx, tx, itemsTable(), lock.Limit(1), lock.Limit(2))),
			"Claim with NoWait":       second(lock.Claim(ctx, tx, itemsTable(), 1, lock.WithWait(lock.NoWait))),
			"Claim with Limit":        second(lock.Claim(ctx, tx, itemsTable(), 1, lock.Limit(2))),
			"Claim limit 0":           second(lock.Claim(ctx, tx, itemsTable(), 0)),
			"Limit 0":                 second(lock.Select(ctx, tx, itemsTable(), lock.Limit(0))),
			"Where on Row":            lock.Row(ctx, tx, itemsTable(), pgcc.Key{1}, lock.Where("true")),
			"OrderBy on Load":         second(lock.Load(ctx, tx, itemsTable(), []pgcc.Key{{1}}, lock.OrderBy("id"))),
			"AllowMissing on Row":     lock.Row(ctx, tx, itemsTable(), pgcc.Key{1}, lock.AllowMissing()),
			"WithLossCheck on Row":    lock.Row(ctx, tx, itemsTable(), pgcc.Key{1}, lock.WithLossCheck(time.Second)),
			"unknown strength":        lock.Row(ctx, tx, itemsTable(), pgcc.Key{1}, lock.WithStrength(lock.Strength(9))),
			"unknown wait":            lock.Row(ctx, tx, itemsTable(), pgcc.Key{1}, lock.WithWait(lock.WaitPolicy(7))),
			"zero timeout":            lock.Row(ctx, tx, itemsTable(), pgcc.Key{1}, lock.WithTimeout(0)),
			"negative timeout":        lock.Row(ctx, tx, itemsTable(), pgcc.Key{1}, lock.WithTimeout(-time.Second)),
			"nil option":              lock.Row(ctx, tx, itemsTable(), pgcc.Key{1}, nil),
			"empty Where":             second(lock.Select(ctx, tx, itemsTable(), lock.Where(" "))),
			"advisory key share":      lock.XactLock(ctx, tx, 1, lock.WithStrength(lock.ForKeyShare)),
			"advisory no key update":  lock.XactLock(ctx, tx, 1, lock.WithStrength(lock.ForNoKeyUpdate)),
			"advisory skip":           lock.XactLock(ctx, tx, 1, lock.WithWait(lock.SkipLocked)),
			"zero loss check":         second(lock.SessionLock(ctx, pool, 1, lock.WithLossCheck(0))),
		} {
			if !errors.Is(err, pgcc.ErrInvalidArgument) {
				t.Errorf("%s: %v, want ErrInvalidArgument", name, err)
			}
		}
		if n := queryInt(t, tx, "SELECT 1"); n != 1 {
			t.Fatal("transaction unusable: something was sent")
		}
		if err := lock.Row(ctx, tx, itemsTable(), pgcc.Key{1}, lock.WithWait(lock.NoWait), lock.WithWait(lock.NoWait), lock.WithDiagnostics(pool), lock.WithDiagnostics(pool)); err != nil {
			t.Errorf("the same options twice: %v", err)
		}
	})
	if n := pool.Stat().AcquiredConns(); n != 0 {
		t.Errorf("%d connections acquired after refused calls", n)
	}
}
