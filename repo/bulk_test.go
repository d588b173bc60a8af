package repo_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgcc/pgcc"
	"github.com/pgcc/pgcc/internal/pgtest"
	"github.com/pgcc/pgcc/repo"
)

// Seat has a two-column key, the shape whose row-value IN lists hit PostgreSQL's stack depth at 10,000 keys.
type Seat struct {
	Venue   string `db:"venue"`
	No      int64  `db:"no"`
	Holder  string `db:"holder"`
	Version int64  `db:"version"`
}

// TestUpdateAllTwoColumnKeys: 12,000 rows with a two-column key in one UPDATE (and, after a conflict, one read
// of the conflicting keys), all or nothing, conflicts reported per key in batch order.
func TestUpdateAllTwoColumnKeys(t *testing.T) {
	t.Parallel()
	const n = 12000
	tracer := &statementLog{}
	pool := pgtest.Pool(t, func(c *pgxpool.Config) { c.ConnConfig.Tracer = tracer })
	ctx := context.Background()
	if _, err := pool.Exec(ctx, `CREATE TABLE seats (venue text, no bigint, holder text NOT NULL, version bigint NOT NULL, PRIMARY KEY (venue, no));
		INSERT INTO seats SELECT 'venue ' || (g % 3), g, '', 1 FROM generate_series(1, `+fmt.Sprint(n)+`) g`); err != nil {
		t.Fatal(err)
	}
	seats, err := repo.NewTable[Seat]("seats", repo.WithKey("venue", "no"))
	if err != nil {
		t.Fatal(err)
	}
	rows, err := pool.Query(ctx, "SELECT venue, no, holder, version FROM seats ORDER BY no")
	if err != nil {
		t.Fatal(err)
	}
	all, err := pgx.CollectRows(rows, pgx.RowToAddrOfStructByName[Seat])
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range all {
		s.Holder = "h" + fmt.Sprint(s.No)
	}
	if _, err := pool.Exec(ctx, "UPDATE seats SET version = 7 WHERE no IN (10, 11000); DELETE FROM seats WHERE no = 500"); err != nil {
		t.Fatal(err)
	}
	tracer.reset()
	err = seats.UpdateAll(ctx, pool, all)
	var bulk *repo.BulkConflictError
	if !errors.As(err, &bulk) || bulk.Rows != n || len(bulk.Conflicts) != 3 {
		t.Fatalf("UpdateAll: %v, want 3 conflicts", err)
	}
	want := []pgcc.ConflictError{
		{Key: pgcc.Key{"venue 1", int64(10)}, Expected: 1, Actual: 7},
		{Key: pgcc.Key{"venue 2", int64(500)}, Expected: 1, Deleted: true},
		{Key: pgcc.Key{"venue 2", int64(11000)}, Expected: 1, Actual: 7},
	}
	for i, c := range bulk.Conflicts {
		if !sameKey(c.Key, want[i].Key) || c.Expected != want[i].Expected || c.Actual != want[i].Actual || c.Deleted != want[i].Deleted || c.Op != pgcc.OpBulkUpdate {
			t.Fatalf("conflict %d: %+v, want %+v", i, *c, want[i])
		}
	}
	if got := strings.Join(tracer.statements(), " "); got != "UPDATE SELECT rollback" {
		// begin with the catalog read (first use of the table) in one batch, which a query tracer does not see;
		// the UPDATE, the read of the conflicting keys.
		t.Fatalf("statements: %s", got)
	}
	if n := queryInt(t, pool, "SELECT count(*) FROM seats WHERE holder <> ''"); n != 0 {
		t.Fatalf("%d rows written by a batch that conflicted", n)
	}
	kept := all[:0]
	for _, s := range all {
		switch s.No {
		case 10, 11000:
			s.Version = 7
		case 500:
			continue
		}
		kept = append(kept, s)
	}
	tracer.reset()
	if err := seats.UpdateAll(ctx, pool, kept); err != nil {
		t.Fatal(err)
	}
	if got := tracer.statements(); len(got) != 3 {
		t.Fatalf("statements of a batch of %d rows: %q, want begin, one UPDATE, commit", len(kept), got)
	}
	if n := queryInt(t, pool, "SELECT count(*) FROM seats WHERE holder = 'h' || no AND version IN (2, 8)"); n != int64(len(kept)) {
		t.Fatalf("%d rows written, want %d", n, len(kept))
	}
	if kept[0].Version != 2 || kept[9].Version != 8 {
		t.Fatalf("versions %d, %d after the batch, want 2, 8", kept[0].Version, kept[9].Version)
	}
	dup := []*Seat{kept[0], kept[1], kept[0]}
	if err := seats.UpdateAll(ctx, pool, dup); !errors.Is(err, pgcc.ErrInvalidArgument) || !strings.Contains(err.Error(), "rows 0 and 2 have the same key") {
		t.Fatalf("a batch with a row twice: %v", err)
	}
}

// Gadget has columns of types a typed array of Go values could not carry: an enum, an array, json, a domain, a
// timestamp, bytea, NULLs.
type Gadget struct {
	ID      int64      `db:"id"`
	Kind    string     `db:"kind"`
	Tags    []string   `db:"tags"`
	Spec    []byte     `db:"spec"`
	Weight  float64    `db:"weight"`
	Seen    *time.Time `db:"seen"`
	Blob    []byte     `db:"blob"`
	Note    *string    `db:"note"`
	Version int64      `db:"version"`
}

func TestUpdateAllTypes(t *testing.T) {
	t.Parallel()
	pool := pgtest.Pool(t)
	ctx := context.Background()
	if _, err := pool.Exec(ctx, `CREATE TYPE kind AS ENUM ('small', 'large');
		CREATE DOMAIN grams AS double precision CHECK (VALUE >= 0);
		CREATE TABLE gadgets (id bigint PRIMARY KEY, kind kind NOT NULL, tags text[], spec json, weight grams,
			seen timestamptz, blob bytea, note varchar(5), version bigint NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	gadgets, err := repo.NewTable[Gadget]("gadgets")
	if err != nil {
		t.Fatal(err)
	}
	seen := time.Date(2024, 2, 29, 12, 30, 0, 123456000, time.UTC)
	note := `a,"b`
	want := []Gadget{
		{ID: 1, Kind: "small", Tags: []string{"a", "b c", `"q"`, "{x}", ""}, Spec: []byte(`{"k": [1, 2]}`), Weight: 0.1, Seen: &seen, Blob: []byte{0, 1, 255}, Note: &note},
		{ID: 2, Kind: "large"},
	}
	for i := range want {
		g := Gadget{ID: want[i].ID, Kind: "small"}
		if err := gadgets.Insert(ctx, pool, &g); err != nil {
			t.Fatal(err)
		}
		want[i].Version = 1
	}
	ptrs := []*Gadget{&want[0], &want[1]}
	if err := gadgets.UpdateAll(ctx, pool, ptrs); err != nil {
		t.Fatal(err)
	}
	for _, w := range want {
		got := mustGet(t, gadgets, pool, w.ID)
		if fmt.Sprintf("%v %q %s %v %v %x %v", got.Kind, got.Tags, got.Spec, got.Weight, fmtTime(got.Seen), got.Blob, fmtStr(got.Note)) !=
			fmt.Sprintf("%v %q %s %v %v %x %v", w.Kind, w.Tags, w.Spec, w.Weight, fmtTime(w.Seen), w.Blob, fmtStr(w.Note)) || got.Version != w.Version {
			t.Fatalf("stored %+v, want %+v", got, w)
		}
	}
	// Single-row writes of the same types: the domain column is compared as its base type.
	one := mustGet(t, gadgets, pool, int64(2))
	if err := gadgets.Update(ctx, pool, &one); err != nil || one.Version != 2 {
		t.Fatalf("no-op Update of a row with a domain, an enum, json: %v, version %d", err, one.Version)
	}
	one.Weight, one.Tags = 2.5, []string{"z"}
	if err := gadgets.Update(ctx, pool, &one); err != nil || one.Version != 3 {
		t.Fatalf("Update of a row with a domain, an enum, json: %v, version %d", err, one.Version)
	}
	one.Weight = -2
	if err := gadgets.UpdateColumns(ctx, pool, &one, "weight"); pgCode(err) != "23514" {
		t.Fatalf("Update violating a domain: %v, want SQLSTATE 23514", err)
	}
	one.Weight = 2.5
	want[1] = one
	bad := want[1]
	bad.Weight = -1 // the domain's CHECK refuses it: PostgreSQL's error, nothing written
	if err := gadgets.UpdateAll(ctx, pool, []*Gadget{&want[0], &bad}); pgCode(err) != "23514" {
		t.Fatalf("UpdateAll violating a domain: %v, want SQLSTATE 23514", err)
	}
	long := "toolong"
	bad = want[1]
	bad.Note = &long // varchar(5): the assignment applies the type modifier
	if err := gadgets.UpdateAll(ctx, pool, []*Gadget{&bad}); pgCode(err) != "22001" {
		t.Fatalf("UpdateAll with a value too long: %v, want SQLSTATE 22001", err)
	}
}

func fmtTime(t *time.Time) string {
	if t == nil {
		return "NULL"
	}
	return t.UTC().Format(time.RFC3339Nano)
}

func fmtStr(s *string) string {
	if s == nil {
		return "NULL"
	}
	return *s
}
