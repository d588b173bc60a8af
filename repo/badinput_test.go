package repo_test

import (
	"context"
	"errors"
	"math"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgcc/pgcc"
	"github.com/pgcc/pgcc/repo"
)

// TestBadInput calls every entry point with bad values. Each is refused with an error matching
// pgcc.ErrInvalidArgument that names the argument, before anything is sent: the table is unchanged
// afterwards, no statement reached the server, and (checked by the harness) no connection is left acquired.
// The "Bad input" section of docs/reliability.md is this table in prose.
func TestBadInput(t *testing.T) {
	t.Parallel()
	tracer := &statementLog{}
	_, pool, accounts := setup(t, 3, func(c *pgxpool.Config) { c.ConnConfig.Tracer = tracer })
	ctx := context.Background()
	if _, err := pool.Exec(ctx, `CREATE TABLE memberships (tenant text, user_id int, role text NOT NULL, version bigint NOT NULL, PRIMARY KEY (tenant, user_id))`); err != nil {
		t.Fatal(err)
	}
	members, err := repo.NewTable[Membership]("memberships", repo.WithKey("tenant", "user_id"))
	if err != nil {
		t.Fatal(err)
	}
	row := mustGet(t, accounts, pool, int64(1))
	noop := func(context.Context, *Account) error {
		t.Error("Modify called its function for a refused key")
		return nil
	}
	var nilPool *pgxpool.Pool
	var nilConn *pgx.Conn
	var nilTable *repo.Table[Account]
	tag := pgconn.NewCommandTag("UPDATE 0")
	nul := row
	tracer.reset()

	for _, tc := range []struct {
		name string
		call func() error
		want string // in the message
	}{
		{"float key 3.9 for a bigint key (Get)", func() error { _, err := accounts.Get(ctx, pool, pgcc.Key{3.9}); return err }, `key value 3.9 (float64) for column "id" is not an integer, and would be truncated`},
		{"float key 3.9 (Modify)", func() error { _, err := accounts.Modify(ctx, pool, pgcc.Key{3.9}, noop); return err }, "would be truncated"},
		{"float key 3.9 (Check)", func() error { return accounts.Check(ctx, pool, tag, pgcc.Key{3.9}, 1) }, "would be truncated"},
		{"float key +Inf", func() error { _, err := accounts.Get(ctx, pool, pgcc.Key{math.Inf(1)}); return err }, "is not an integer"},
		{"float key NaN", func() error { _, err := accounts.Get(ctx, pool, pgcc.Key{math.NaN()}); return err }, "is not an integer"},
		{"float key 2^63", func() error { _, err := accounts.Get(ctx, pool, pgcc.Key{math.Ldexp(1, 63)}); return err }, "out of range"},
		{"uint64 key above int64", func() error { _, err := accounts.Get(ctx, pool, pgcc.Key{uint64(math.MaxUint64)}); return err }, "out of range for 64-bit integers"},
		{"string key for a bigint key", func() error { _, err := accounts.Get(ctx, pool, pgcc.Key{"3"}); return err }, "is not a number"},
		{"nil key value", func() error { _, err := accounts.Get(ctx, pool, pgcc.Key{nil}); return err }, "is NULL"},
		{"nil pointer key value", func() error { _, err := accounts.Get(ctx, pool, pgcc.Key{(*int64)(nil)}); return err }, "is NULL"},
		{"key of the wrong length", func() error { _, err := accounts.Get(ctx, pool, pgcc.Key{int64(1), int64(2)}); return err }, `1 key column(s) ("id"), the key has 2 value(s)`},
		{"empty key", func() error { _, err := accounts.Get(ctx, pool, nil); return err }, "the key has 0 value(s)"},
		{"int64 beyond an int32 key field", func() error { _, err := members.Get(ctx, pool, pgcc.Key{"acme", int64(1) << 40}); return err }, "out of range for 32-bit integers"},
		{"number for a text key", func() error { _, err := members.Get(ctx, pool, pgcc.Key{7, int32(1)}); return err }, `for column "tenant" is not a string`},
		{"column name with NUL", func() error { return accounts.UpdateColumns(ctx, pool, &nul, "owner\x00balance") }, "contains a NUL byte"},
		{"no columns", func() error { return accounts.UpdateColumns(ctx, pool, &nul) }, "at least one column"},
		{"nil WriteOption", func() error { return accounts.Update(ctx, pool, &nul, nil) }, "nil WriteOption"},
		{"KeepVersion on Delete", func() error { return accounts.Delete(ctx, pool, &nul, repo.KeepVersion()) }, "a delete writes no version"},
		{"nil handle", func() error { _, err := accounts.Get(ctx, nil, pgcc.Key{int64(1)}); return err }, "the database handle is nil"},
		{"typed nil pool (Get)", func() error { _, err := accounts.Get(ctx, nilPool, pgcc.Key{int64(1)}); return err }, "the database handle is a nil *pgxpool.Pool"},
		{"typed nil pool (Insert)", func() error { return accounts.Insert(ctx, nilPool, &nul) }, "nil *pgxpool.Pool"},
		{"typed nil pool (Update)", func() error { return accounts.Update(ctx, nilPool, &nul) }, "nil *pgxpool.Pool"},
		{"typed nil pool (UpdateColumns)", func() error { return accounts.UpdateColumns(ctx, nilPool, &nul, "owner") }, "nil *pgxpool.Pool"},
		{"typed nil pool (Delete)", func() error { return accounts.Delete(ctx, nilPool, &nul) }, "nil *pgxpool.Pool"},
		{"typed nil pool (ForceIncrement)", func() error { return accounts.ForceIncrement(ctx, nilPool, &nul) }, "nil *pgxpool.Pool"},
		{"typed nil pool (Modify)", func() error { _, err := accounts.Modify(ctx, nilPool, pgcc.Key{int64(1)}, noop); return err }, "nil *pgxpool.Pool"},
		{"typed nil pool (Check)", func() error { return accounts.Check(ctx, nilPool, tag, pgcc.Key{int64(1)}, 1) }, "nil *pgxpool.Pool"},
		{"typed nil pool (UpdateAll)", func() error { return accounts.UpdateAll(ctx, nilPool, []*Account{&nul}) }, "nil *pgxpool.Pool"},
		{"typed nil pool (InsertOrGet)", func() error { _, err := accounts.InsertOrGet(ctx, nilPool, &nul); return err }, "nil *pgxpool.Pool"},
		{"typed nil pool (Upsert)", func() error { _, err := accounts.Upsert(ctx, nilPool, &nul); return err }, "nil *pgxpool.Pool"},
		{"typed nil conn", func() error { _, err := accounts.Get(ctx, nilConn, pgcc.Key{int64(1)}); return err }, "nil *pgx.Conn"},
		{"nil table (Get)", func() error { _, err := nilTable.Get(ctx, pool, pgcc.Key{int64(1)}); return err }, "nil *repo.Table"},
		{"nil table (Insert)", func() error { return nilTable.Insert(ctx, pool, &nul) }, "nil *repo.Table"},
		{"nil table (Update)", func() error { return nilTable.Update(ctx, pool, &nul) }, "nil *repo.Table"},
		{"nil table (UpdateColumns)", func() error { return nilTable.UpdateColumns(ctx, pool, &nul, "owner") }, "nil *repo.Table"},
		{"nil table (Delete)", func() error { return nilTable.Delete(ctx, pool, &nul) }, "nil *repo.Table"},
		{"nil table (ForceIncrement)", func() error { return nilTable.ForceIncrement(ctx, pool, &nul) }, "nil *repo.Table"},
		{"nil table (Modify)", func() error { _, err := nilTable.Modify(ctx, pool, pgcc.Key{int64(1)}, noop); return err }, "nil *repo.Table"},
		{"nil table (Check)", func() error { return nilTable.Check(ctx, pool, tag, pgcc.Key{int64(1)}, 1) }, "nil *repo.Table"},
		{"nil table (UpdateAll)", func() error { return nilTable.UpdateAll(ctx, pool, []*Account{&nul}) }, "nil *repo.Table"},
		{"nil table (InsertOrGet)", func() error { _, err := nilTable.InsertOrGet(ctx, pool, &nul); return err }, "nil *repo.Table"},
		{"nil table (Upsert)", func() error { _, err := nilTable.Upsert(ctx, pool, &nul); return err }, "nil *repo.Table"},
		{"nil table (SetVersion)", func() error { return nilTable.SetVersion(&nul, 1) }, "SetVersion needs a table"},
		{"nil row (Insert)", func() error { return accounts.Insert(ctx, pool, nil) }, "the row is nil"},
		{"nil row (Update)", func() error { return accounts.Update(ctx, pool, nil) }, "the row is nil"},
		{"nil row (UpdateColumns)", func() error { return accounts.UpdateColumns(ctx, pool, nil, "owner") }, "the row is nil"},
		{"nil row (Delete)", func() error { return accounts.Delete(ctx, pool, nil) }, "the row is nil"},
		{"nil row (ForceIncrement)", func() error { return accounts.ForceIncrement(ctx, pool, nil) }, "the row is nil"},
		{"nil row (UpdateAll)", func() error { return accounts.UpdateAll(ctx, pool, []*Account{nil}) }, "row 0 is nil"},
		{"nil row (InsertOrGet)", func() error { _, err := accounts.InsertOrGet(ctx, pool, nil); return err }, "the row is nil"},
		{"nil row (Upsert)", func() error { _, err := accounts.Upsert(ctx, pool, nil); return err }, "the row is nil"},
		{"nil row (SetVersion)", func() error { return accounts.SetVersion(nil, 1) }, "nil row: true"},
		{"nil function (Modify)", func() error { _, err := accounts.Modify(ctx, pool, pgcc.Key{int64(1)}, nil); return err }, "needs a function"},
		{"same row twice (UpdateAll)", func() error { return accounts.UpdateAll(ctx, pool, []*Account{&nul, &nul}) }, "have the same key"},
		{"DBTX that cannot begin (UpdateAll)", func() error { return accounts.UpdateAll(ctx, onlyDBTX{pool}, []*Account{&nul}) }, "needs a handle that can begin"},
		{"garbage ETag", func() error { _, err := repo.ParseETag(`"7`); return err }, "is not a version tag"},
	} {
		err := tc.call()
		if !errors.Is(err, pgcc.ErrInvalidArgument) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v\n\twant ErrInvalidArgument containing %q", tc.name, err, tc.want)
		}
	}
	if got := tracer.statements(); len(got) != 0 {
		t.Fatalf("refused calls sent %q", got)
	}
	for id := int64(1); id <= 3; id++ {
		if got := mustGet(t, accounts, pool, id); got.Version != 1 || got.Balance != 100 {
			t.Fatalf("row %d changed: %+v", id, got)
		}
	}

	// Lossless conversions are accepted: 3.0 for a bigint key, an int, a named integer type, a pointer.
	type accountID int64
	three := int64(3)
	for _, k := range []any{3.0, 3, int32(3), uint8(3), accountID(3), &three} {
		if got, err := accounts.Get(ctx, pool, pgcc.Key{k}); err != nil || got.ID != 3 {
			t.Errorf("Get(%T %v): %+v, %v", k, k, got, err)
		}
	}

	// Accessors of a nil table return zero values instead of panicking.
	if nilTable.Name() != "" || nilTable.Identifier() != nil || nilTable.KeyColumns() != nil || nilTable.SelectColumns() != nil ||
		nilTable.VersionColumn() != "" || nilTable.KeyOf(&row) != nil || nilTable.VersionOf(&row) != 0 || nilTable.Kind() != repo.VersionCounter {
		t.Fatal("a nil table's accessors returned something")
	}
	if accounts.KeyOf(nil) != nil || accounts.VersionOf(nil) != 0 {
		t.Fatal("accessors of a nil row returned something")
	}
}

// TestKeyTextQuoted: a key containing a newline or quotes cannot forge a line in an error message.
func TestKeyTextQuoted(t *testing.T) {
	t.Parallel()
	pool := pgtestPoolWithMemberships(t)
	members, err := repo.NewTable[Membership]("memberships", repo.WithKey("tenant", "user_id"))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	forged := "acme\npgcc: conflict updating \"x\" id=1"
	_, err = members.Get(ctx, pool, pgcc.Key{forged, int32(1)})
	if !errors.Is(err, pgcc.ErrNotFound) || strings.Contains(err.Error(), "\n") {
		t.Fatalf("NotFound for a key with a newline: %q", err)
	}
	m := Membership{Tenant: forged, UserID: 1, Role: "r"}
	err = members.Update(ctx, pool, &m)
	if !errors.Is(err, pgcc.ErrConflict) || strings.Contains(err.Error(), "\n") || !strings.Contains(err.Error(), `tenant="acme\npgcc:`) {
		t.Fatalf("conflict for a key with a newline: %q", err)
	}
	_, err = members.Get(ctx, pool, pgcc.Key{forged, 1.5})
	if !errors.Is(err, pgcc.ErrInvalidArgument) || strings.Contains(err.Error(), "\n") {
		t.Fatalf("refusal for a bad key: %q", err)
	}
}

// TestNewTableRefusals: descriptions that cannot work are refused when the table is described.
func TestNewTableRefusals(t *testing.T) {
	t.Parallel()
	type int8Version struct {
		ID      int64 `db:"id"`
		Version int8  `db:"version"`
	}
	type int32Version struct {
		ID      int64 `db:"id"`
		Version int32 `db:"version"`
	}
	type uint32Counter struct {
		ID      int64  `db:"id"`
		Version uint32 `db:"version"`
	}
	type intVersion struct {
		ID      int64 `db:"id"`
		Version int   `db:"version"`
	}
	type uintVersion struct {
		ID      int64  `db:"id"`
		Version uint64 `db:"version"`
	}
	type stringStamp struct {
		ID        int64  `db:"id"`
		UpdatedAt string `db:"updated_at"`
	}
	for _, tc := range []struct {
		name string
		err  error
		want string
	}{
		{"int8 version", func() error { _, err := repo.NewTable[int8Version]("t"); return err }(), "narrower integer would wrap around"},
		{"int32 version", func() error { _, err := repo.NewTable[int32Version]("t"); return err }(), "narrower integer would wrap around"},
		{"uint32 counter", func() error { _, err := repo.NewTable[uint32Counter]("t"); return err }(), "must be int64 or uint64"},
		{"InSchema(\"\")", func() error { _, err := repo.NewTable[Account]("t", repo.InSchema("")); return err }(), "InSchema with an empty schema name"},
		{"WithVersion(\"\")", func() error { _, err := repo.NewTable[Account]("t", repo.WithVersion("")); return err }(), "empty version column name"},
		{"WithKey()", func() error { _, err := repo.NewTable[Account]("t", repo.WithKey()); return err }(), "at least one column"},
		{"timestamp version in a string", func() error {
			_, err := repo.NewTable[stringStamp]("t", repo.WithTimestampVersion("updated_at"))
			return err
		}(), "must be time.Time"},
	} {
		if !errors.Is(tc.err, pgcc.ErrInvalidArgument) || !strings.Contains(tc.err.Error(), tc.want) {
			t.Errorf("%s: %v, want ErrInvalidArgument containing %q", tc.name, tc.err, tc.want)
		}
	}
	for name, err := range map[string]error{
		"int":    func() error { _, err := repo.NewTable[intVersion]("t"); return err }(),
		"uint64": func() error { _, err := repo.NewTable[uintVersion]("t"); return err }(),
	} {
		if err != nil {
			t.Errorf("%s version: %v", name, err)
		}
	}
}

func pgtestPoolWithMemberships(t *testing.T) *pgxpool.Pool {
	t.Helper()
	_, pool, _ := setup(t, 0)
	if _, err := pool.Exec(context.Background(), `CREATE TABLE memberships (tenant text, user_id int, role text NOT NULL, version bigint NOT NULL, PRIMARY KEY (tenant, user_id))`); err != nil {
		t.Fatal(err)
	}
	return pool
}
