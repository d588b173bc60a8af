package lock_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgcc/pgcc"
	"github.com/pgcc/pgcc/lock"
	"github.com/pgcc/pgcc/repo"
)

// allExecModes are every pgx query exec mode.
var allExecModes = []pgx.QueryExecMode{pgx.QueryExecModeCacheStatement, pgx.QueryExecModeCacheDescribe,
	pgx.QueryExecModeDescribeExec, pgx.QueryExecModeExec, pgx.QueryExecModeSimpleProtocol}

func execMode(mode pgx.QueryExecMode) func(*pgxpool.Config) {
	return func(c *pgxpool.Config) { c.ConnConfig.DefaultQueryExecMode = mode }
}

// TestEveryExecMode runs every lock feature under each pgx query exec mode: keys travel as typed arrays, never
// a []any that exec and simple_protocol cannot encode.
func TestEveryExecMode(t *testing.T) {
	t.Parallel()
	for _, mode := range allExecModes {
		t.Run(mode.String(), func(t *testing.T) {
			t.Parallel()
			pool := setup(t, 10, execMode(mode))
			exerciseFeatures(t, pool, pool)
			ctx := context.Background()
			h, err := lock.SessionLock(ctx, pool, lock.StringKey("pgcc-test", mode.String()))
			if err != nil {
				t.Fatal(err)
			}
			if err := h.Release(ctx); err != nil {
				t.Fatal(err)
			}
		})
	}
}

type wide struct {
	Tenant string
	Seq    int64
	N      int64
}

// TestManyTwoColumnKeys: 10,000 and 70,000 two-column keys are one statement of two parameters (typed arrays
// joined with unnest), under the default and the simple protocol; rows come back in the order asked.
func TestManyTwoColumnKeys(t *testing.T) {
	t.Parallel()
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeCacheStatement, pgx.QueryExecModeSimpleProtocol} {
		t.Run(mode.String(), func(t *testing.T) {
			t.Parallel()
			pool := setup(t, 0, execMode(mode))
			ctx := context.Background()
			if _, err := pool.Exec(ctx, `CREATE TABLE wide (tenant text, seq bigint, n bigint NOT NULL DEFAULT 0, PRIMARY KEY (tenant, seq));
				INSERT INTO wide SELECT 't' || (g % 7), g FROM generate_series(1, 70000) g`); err != nil {
				t.Fatal(err)
			}
			table := must(lock.NewTable[wide]("wide", lock.WithKey("tenant", "seq")))
			for _, n := range []int{10000, 70000} {
				keys := make([]pgcc.Key, n)
				for i := range keys {
					g := n - i // descending: the order asked is not the key order
					keys[i] = pgcc.Key{fmt.Sprintf("t%d", g%7), g}
				}
				inTx(t, pool, func(tx pgx.Tx) {
					rows, err := lock.Load(ctx, tx, table, keys)
					if err != nil {
						t.Fatalf("%d keys: %v", n, err)
					}
					if len(rows) != n || rows[0].Seq != int64(n) || rows[n-1].Seq != 1 {
						t.Fatalf("%d keys: got %d rows, first %v, last %v", n, len(rows), rows[0], rows[len(rows)-1])
					}
					locked := queryInt(t, pool, "SELECT count(*) FROM wide WHERE xmax::text::bigint <> 0")
					if locked < int64(n) {
						t.Errorf("%d keys: %d rows carry a lock", n, locked)
					}
				})
			}
		})
	}
}

// TestLoadOrderDuplicatesAndMissing: rows come back in the order asked, a key asked twice gives its row twice,
// and missing keys are one error listing them all, unless AllowMissing.
func TestLoadOrderDuplicatesAndMissing(t *testing.T) {
	t.Parallel()
	pool := setup(t, 5)
	ctx := context.Background()
	inTx(t, pool, func(tx pgx.Tx) {
		rows, err := lock.Load(ctx, tx, itemsTable(), []pgcc.Key{{4}, {2}, {4}, {int64(1)}, {uint8(5)}})
		if err != nil {
			t.Fatal(err)
		}
		var ids []int32
		for _, r := range rows {
			ids = append(ids, r.ID)
		}
		if fmt.Sprint(ids) != "[4 2 4 1 5]" {
			t.Errorf("Load ids = %v, want [4 2 4 1 5]", ids)
		}
	})
	inTx(t, pool, func(tx pgx.Tx) {
		_, err := lock.Load(ctx, tx, itemsTable(), []pgcc.Key{{7}, {2}, {9}})
		var missing *lock.MissingError
		if !errors.As(err, &missing) || !errors.Is(err, pgcc.ErrNotFound) {
			t.Fatalf("err = %v, want a MissingError", err)
		}
		if fmt.Sprint(missing.Keys) != "[(7) (9)]" || missing.Table != `"items"` {
			t.Errorf("MissingError = %+v", missing)
		}
		if nf, ok := errorsAs[*pgcc.NotFoundError](err); !ok || fmt.Sprint(nf.Key) != "(7)" {
			t.Errorf("errors.As NotFoundError = %v, %v", nf, ok)
		}
		if want := `pgcc: "items" id=7, id=9 not found`; err.Error() != want {
			t.Errorf("message %q, want %q", err.Error(), want)
		}
	})
	inTx(t, pool, func(tx pgx.Tx) {
		rows, err := lock.Load(ctx, tx, itemsTable(), []pgcc.Key{{7}, {3}, {9}, {1}}, lock.AllowMissing())
		if err != nil || len(rows) != 2 || rows[0].ID != 3 || rows[1].ID != 1 {
			t.Errorf("AllowMissing: %v, %v; want rows 3 and 1", rows, err)
		}
		keys, err := lock.Rows(ctx, tx, plainItems(), []pgcc.Key{{7}})
		if !errors.Is(err, pgcc.ErrNotFound) || keys != nil {
			t.Errorf("Rows of a missing key = %v, %v; want ErrNotFound", keys, err)
		}
	})
}

// TestKeyValuesChecked: a non-integral float is refused rather than truncated by pgx (3.9 would lock row 3);
// an integral one locks its row; NULL, mixed kinds and out-of-range unsigned values are refused; nothing is
// sent for a refused call.
func TestKeyValuesChecked(t *testing.T) {
	t.Parallel()
	pool := setup(t, 5)
	ctx := context.Background()
	inTx(t, pool, func(tx pgx.Tx) {
		for name, err := range map[string]error{
			"float 3.9 (Row)":      lock.Row(ctx, tx, itemsTable(), pgcc.Key{3.9}),
			"float 3.9 (Rows)":     lockRows(ctx, tx, []pgcc.Key{{1}, {3.9}}),
			"float32 2.5":          lockRows(ctx, tx, []pgcc.Key{{float32(2.5)}}),
			"NaN":                  lock.Row(ctx, tx, itemsTable(), pgcc.Key{nanValue()}),
			"NULL":                 lock.Row(ctx, tx, itemsTable(), pgcc.Key{nil}),
			"NULL in many":         lockRows(ctx, tx, []pgcc.Key{{1}, {nil}}),
			"mixed int and string": lockRows(ctx, tx, []pgcc.Key{{1}, {"2"}}),
			"uint64 past bigint":   lock.Row(ctx, tx, itemsTable(), pgcc.Key{uint64(1) << 63}),
			"arity":                lockRows(ctx, tx, []pgcc.Key{{1}, {1, 2}}),
		} {
			if !errors.Is(err, pgcc.ErrInvalidArgument) {
				t.Errorf("%s: %v, want ErrInvalidArgument", name, err)
			}
		}
		if n := queryInt(t, tx, "SELECT 1"); n != 1 {
			t.Fatal("transaction unusable: something was sent")
		}
		if err := lock.Row(ctx, tx, itemsTable(), pgcc.Key{3.0}); err != nil {
			t.Errorf("integral float 3.0: %v", err)
		}
		keys, err := lock.Rows(ctx, tx, plainItems(), []pgcc.Key{{float64(2)}, {int8(4)}})
		if err != nil || len(keys) != 2 {
			t.Errorf("integral floats and ints mixed: %v, %v", keys, err)
		}
	})
	// A float key column, described with a float field, takes non-integral values.
	if _, err := pool.Exec(ctx, "CREATE TABLE readings (at float8 PRIMARY KEY, v int NOT NULL DEFAULT 0); INSERT INTO readings VALUES (1.5), (2.25)"); err != nil {
		t.Fatal(err)
	}
	type reading struct {
		At float64
		V  int32
	}
	readings := must(lock.NewTable[reading]("readings", lock.WithKey("at")))
	inTx(t, pool, func(tx pgx.Tx) {
		rows, err := lock.Load(ctx, tx, readings, []pgcc.Key{{2.25}, {1.5}})
		if err != nil || len(rows) != 2 || rows[0].At != 2.25 {
			t.Errorf("float keys on a float column: %v, %v", rows, err)
		}
	})
}

func lockRows(ctx context.Context, tx pgx.Tx, keys []pgcc.Key) error {
	_, err := lock.Rows(ctx, tx, plainItems(), keys)
	return err
}

func nanValue() float64 {
	zero := 0.0
	return zero / zero
}

// TestLoadInfersTypeAndNamesTable: Load and Claim take a TableOf[T], so T is inferred; a hand-written Table
// whose columns do not match T's fields fails with an error naming the table and T.
func TestLoadInfersTypeAndNamesTable(t *testing.T) {
	t.Parallel()
	pool := setup(t, 2)
	ctx := context.Background()
	type owned struct {
		ID    int32
		N     int64
		Owner string
	}
	// A description that claims a column the struct has no field for, and a struct field with no column.
	bad := badTable[owned]{table: table{name: pgx.Identifier{"items"}, keys: []string{"id"}, cols: []string{"id", "n"}}}
	inTx(t, pool, func(tx pgx.Tx) {
		_, err := lock.Load(ctx, tx, bad, []pgcc.Key{{1}})
		if err == nil || !strings.Contains(err.Error(), `"items"`) || !strings.Contains(err.Error(), "owned") {
			t.Errorf("err = %v, want one naming the table and the struct", err)
		}
		t.Logf("%v", err)
	})
}

// badTable is a hand-written TableOf[T].
type badTable[T any] struct{ table }

func (badTable[T]) KeyOf(*T) pgcc.Key { return nil }

// versioned is a row of a repo table.
type versioned struct {
	ID      int64
	N       int64
	Version int64
}

// *repo.Table[T] is a lock.TableOf[T] through its KeyOf method: Load infers T from it.
var _ lock.TableOf[versioned] = (*repo.Table[versioned])(nil)

func TestLoadRepoTableInfersType(t *testing.T) {
	t.Parallel()
	pool := setup(t, 0)
	ctx := context.Background()
	if _, err := pool.Exec(ctx, "CREATE TABLE versioned (id bigint PRIMARY KEY, n bigint NOT NULL, version bigint NOT NULL); INSERT INTO versioned VALUES (1, 10, 1), (2, 20, 1)"); err != nil {
		t.Fatal(err)
	}
	table, err := repo.NewTable[versioned]("versioned")
	if err != nil {
		t.Fatal(err)
	}
	inTx(t, pool, func(tx pgx.Tx) {
		rows, err := lock.Load(ctx, tx, table, []pgcc.Key{{2}, {1}})
		if err != nil || len(rows) != 2 || rows[0].N != 20 || rows[1].N != 10 {
			t.Fatalf("Load = %v, %v", rows, err)
		}
		rows[0].N++
		if err := table.Update(ctx, tx, &rows[0]); err != nil {
			t.Errorf("repo.Update after lock.Load: %v", err)
		}
	})
}
