package repo_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5"

	"github.com/pgcc/pgcc"
	"github.com/pgcc/pgcc/internal/pgtest"
	"github.com/pgcc/pgcc/repo"
	"github.com/pgcc/pgcc/txn"
)

func TestInsertGetUpdate(t *testing.T) {
	t.Parallel()
	_, pool, accounts := setup(t, 0)
	ctx := context.Background()

	a := Account{ID: 42, Owner: "ada", Balance: 10, Version: 99}
	if err := accounts.Insert(ctx, pool, &a); err != nil {
		t.Fatal(err)
	}
	if a.Version != 1 {
		t.Fatalf("version after Insert = %d, want 1 (whatever the field held)", a.Version)
	}
	got := mustGet(t, accounts, pool, int64(42))
	if got != a {
		t.Fatalf("Get = %+v, want %+v", got, a)
	}
	got.Balance = 25
	got.Owner = "ada lovelace"
	if err := accounts.Update(ctx, pool, &got); err != nil {
		t.Fatal(err)
	}
	if got.Version != 2 {
		t.Fatalf("version after Update = %d, want 2", got.Version)
	}
	if again := mustGet(t, accounts, pool, int64(42)); again != got {
		t.Fatalf("Get after Update = %+v, want %+v", again, got)
	}
}

func TestUpdateStale(t *testing.T) {
	t.Parallel()
	_, pool, accounts := setup(t, 3)
	ctx := context.Background()

	mine := mustGet(t, accounts, pool, int64(2))
	theirs := mustGet(t, accounts, pool, int64(2))
	theirs.Balance = 50
	if err := accounts.Update(ctx, pool, &theirs); err != nil {
		t.Fatal(err)
	}
	theirs.Balance = 60
	if err := accounts.Update(ctx, pool, &theirs); err != nil {
		t.Fatal(err)
	}

	mine.Balance = 1000
	err := accounts.Update(ctx, pool, &mine)
	wantConflict(t, err, pgcc.ConflictError{Table: `"accounts"`, Op: pgcc.OpUpdate, Key: pgcc.Key{int64(2)}, Expected: 1, Actual: 3})
	if got, want := err.Error(), `pgcc: conflict updating "accounts" id=2: expected version 1, found 3`; got != want {
		t.Fatalf("message %q, want %q", got, want)
	}
	if errors.Is(err, pgcc.ErrNotFound) {
		t.Fatal("a stale update must not match ErrNotFound")
	}
	if mine.Version != 1 || mine.Balance != 1000 {
		t.Fatalf("the caller's row changed on conflict: %+v", mine)
	}
	if got := mustGet(t, accounts, pool, int64(2)); got.Balance != 60 || got.Version != 3 {
		t.Fatalf("stored row %+v, want balance 60 at version 3", got)
	}
}

func TestUpdateDeleted(t *testing.T) {
	t.Parallel()
	_, pool, accounts := setup(t, 1)
	ctx := context.Background()

	mine := mustGet(t, accounts, pool, int64(1))
	theirs := mine
	if err := accounts.Delete(ctx, pool, &theirs); err != nil {
		t.Fatal(err)
	}
	mine.Balance = 7
	err := accounts.Update(ctx, pool, &mine)
	wantConflict(t, err, pgcc.ConflictError{Table: `"accounts"`, Op: pgcc.OpUpdate, Key: pgcc.Key{int64(1)}, Expected: 1, Deleted: true})
	if got, want := err.Error(), `pgcc: conflict updating "accounts" id=1: expected version 1, but the row was deleted`; got != want {
		t.Fatalf("message %q, want %q", got, want)
	}
	if n := queryInt(t, pool, "SELECT count(*) FROM accounts"); n != 0 {
		t.Fatalf("%d rows after updating a deleted row, want 0", n)
	}
}

func TestDeleteStale(t *testing.T) {
	t.Parallel()
	_, pool, accounts := setup(t, 1)
	ctx := context.Background()

	mine := mustGet(t, accounts, pool, int64(1))
	theirs := mine
	theirs.Owner = "someone else"
	if err := accounts.Update(ctx, pool, &theirs); err != nil {
		t.Fatal(err)
	}
	err := accounts.Delete(ctx, pool, &mine)
	wantConflict(t, err, pgcc.ConflictError{Table: `"accounts"`, Op: pgcc.OpDelete, Key: pgcc.Key{int64(1)}, Expected: 1, Actual: 2})
	if got, want := err.Error(), `pgcc: conflict deleting "accounts" id=1: expected version 1, found 2`; got != want {
		t.Fatalf("message %q, want %q", got, want)
	}
	if n := queryInt(t, pool, "SELECT count(*) FROM accounts"); n != 1 {
		t.Fatalf("a stale delete deleted: %d rows left, want 1", n)
	}

	// Deleting with the current version works; deleting again is a conflict with a deleted row.
	if err := accounts.Delete(ctx, pool, &theirs); err != nil {
		t.Fatal(err)
	}
	err = accounts.Delete(ctx, pool, &theirs)
	wantConflict(t, err, pgcc.ConflictError{Table: `"accounts"`, Op: pgcc.OpDelete, Key: pgcc.Key{int64(1)}, Expected: 2, Deleted: true})

	_, err = accounts.Get(ctx, pool, pgcc.Key{int64(1)})
	var nf *pgcc.NotFoundError
	if !errors.As(err, &nf) || !errors.Is(err, pgcc.ErrNotFound) || !errors.Is(err, pgx.ErrNoRows) || errors.Is(err, pgcc.ErrConflict) {
		t.Fatalf("Get of a deleted row: %v (%T), want a *NotFoundError matching ErrNotFound and pgx.ErrNoRows", err, err)
	}
	if nf.Table != `"accounts"` || !sameKey(nf.Key, pgcc.Key{int64(1)}) || err.Error() != `pgcc: "accounts" id=1 not found` {
		t.Fatalf("NotFoundError %+v: %q", *nf, err.Error())
	}
}

// TestZeroVersion: rows at version 0 (Rails, JPA, ADD COLUMN version … DEFAULT 0) are ordinary rows: every
// write of a row read at 0 lands and gives it version 1, and a row that was never read (version 0 in the struct)
// conflicts with a stored row at another version instead of being written unguarded.
func TestZeroVersion(t *testing.T) {
	t.Parallel()
	_, pool, accounts := setup(t, 6)
	ctx := context.Background()
	if _, err := pool.Exec(ctx, "UPDATE accounts SET version = 0 WHERE id <= 5"); err != nil {
		t.Fatal(err)
	}
	for id, write := range map[int64]func(a *Account) error{
		1: func(a *Account) error { return accounts.Update(ctx, pool, a) },
		2: func(a *Account) error { return accounts.UpdateColumns(ctx, pool, a, "balance") },
		3: func(a *Account) error { return accounts.ForceIncrement(ctx, pool, a) },
		4: func(a *Account) error { return accounts.UpdateAll(ctx, pool, []*Account{a}) },
	} {
		a := mustGet(t, accounts, pool, id)
		if a.Version != 0 {
			t.Fatalf("row %d read at version %d, want 0", id, a.Version)
		}
		a.Balance = 7
		if err := write(&a); err != nil {
			t.Fatalf("row %d at version 0: %v", id, err)
		}
		if a.Version != 1 {
			t.Fatalf("row %d: version after the write %d, want 1", id, a.Version)
		}
		if got := mustGet(t, accounts, pool, id); got.Version != 1 || (id != 3 && got.Balance != 7) {
			t.Fatalf("row %d stored as %+v", id, got)
		}
	}
	got, err := accounts.Modify(ctx, pool, pgcc.Key{int64(5)}, func(_ context.Context, a *Account) error {
		a.Balance = 8
		return nil
	})
	if err != nil || got.Version != 1 || got.Balance != 8 {
		t.Fatalf("Modify of a row at version 0: %+v, %v", got, err)
	}
	zero := mustGet(t, accounts, pool, int64(5))
	zero.Version = 0
	if err := accounts.Delete(ctx, pool, &zero); !errors.Is(err, pgcc.ErrConflict) {
		t.Fatalf("Delete at version 0 of a row at version 1: %v", err)
	}
	zero.Version = 1
	if err := accounts.Delete(ctx, pool, &zero); err != nil {
		t.Fatal(err)
	}

	// A struct that was never read carries version 0: its write is a compare-and-swap like any other, and
	// conflicts with row 6, at version 1.
	unread := Account{ID: 6, Owner: "overwritten?", Balance: -1}
	err = accounts.Update(ctx, pool, &unread)
	wantConflict(t, err, pgcc.ConflictError{Table: `"accounts"`, Op: pgcc.OpUpdate, Key: pgcc.Key{int64(6)}, Expected: 0, Actual: 1})
	if got := mustGet(t, accounts, pool, int64(6)); got.Owner != "owner-6" || got.Balance != 100 || got.Version != 1 {
		t.Fatalf("row changed by a stale write: %+v", got)
	}
}

// TestNullVersion: a NULL version (a column added without a default) reads as 0, is compared as 0 and is
// written as 1, as Rails does.
func TestNullVersion(t *testing.T) {
	t.Parallel()
	_, pool, accounts := setup(t, 3)
	ctx := context.Background()
	if _, err := pool.Exec(ctx, "ALTER TABLE accounts ALTER COLUMN version DROP NOT NULL; UPDATE accounts SET version = NULL"); err != nil {
		t.Fatal(err)
	}
	a := mustGet(t, accounts, pool, int64(1))
	if a.Version != 0 {
		t.Fatalf("NULL version read as %d, want 0", a.Version)
	}
	a.Balance = 1
	if err := accounts.Update(ctx, pool, &a); err != nil || a.Version != 1 {
		t.Fatalf("Update of a NULL version: %v, version %d", err, a.Version)
	}
	if n := queryInt(t, pool, "SELECT version FROM accounts WHERE id = 1"); n != 1 {
		t.Fatalf("stored version %d, want 1", n)
	}
	b := mustGet(t, accounts, pool, int64(2))
	stale := b
	stale.Version = 3
	wantConflict(t, accounts.Update(ctx, pool, &stale), pgcc.ConflictError{Table: `"accounts"`, Op: pgcc.OpUpdate, Key: pgcc.Key{int64(2)}, Expected: 3, Actual: 0})
	if err := accounts.UpdateAll(ctx, pool, []*Account{&b}); err != nil || b.Version != 0 {
		t.Fatalf("UpdateAll of an unchanged NULL-version row: %v, version %d (want 0: nothing changed)", err, b.Version)
	}
	if err := accounts.Delete(ctx, pool, &b); err != nil {
		t.Fatalf("Delete of a NULL-version row: %v", err)
	}
	c := mustGet(t, accounts, pool, int64(3))
	if err := accounts.ForceIncrement(ctx, pool, &c); err != nil || c.Version != 1 {
		t.Fatalf("ForceIncrement of a NULL version: %v, version %d", err, c.Version)
	}
	tag, err := pool.Exec(ctx, "UPDATE accounts SET balance = 0 WHERE id = 3 AND coalesce(version, 0) = 0")
	if err != nil {
		t.Fatal(err)
	}
	wantConflict(t, accounts.Check(ctx, pool, tag, pgcc.Key{int64(3)}, 0), pgcc.ConflictError{Table: `"accounts"`, Op: pgcc.OpCheck, Key: pgcc.Key{int64(3)}, Expected: 0, Actual: 1})
}

func TestUpdateColumns(t *testing.T) {
	t.Parallel()
	_, pool, accounts := setup(t, 1)
	ctx := context.Background()

	row := mustGet(t, accounts, pool, int64(1))
	row.Owner = "changed only locally"
	row.Balance = 5
	if err := accounts.UpdateColumns(ctx, pool, &row, "balance"); err != nil {
		t.Fatal(err)
	}
	if row.Version != 2 {
		t.Fatalf("version after UpdateColumns = %d, want 2", row.Version)
	}
	if got := mustGet(t, accounts, pool, int64(1)); got.Owner != "owner-1" || got.Balance != 5 || got.Version != 2 {
		t.Fatalf("stored %+v, want owner-1 (not written), balance 5, version 2", got)
	}

	stale := row
	stale.Version = 1
	err := accounts.UpdateColumns(ctx, pool, &stale, "owner", "balance")
	wantConflict(t, err, pgcc.ConflictError{Table: `"accounts"`, Op: pgcc.OpUpdate, Key: pgcc.Key{int64(1)}, Expected: 1, Actual: 2})

	for _, cols := range [][]string{nil, {"id"}, {"version"}, {"nope"}, {"owner", "owner"}} {
		if err := accounts.UpdateColumns(ctx, pool, &row, cols...); !errors.Is(err, pgcc.ErrInvalidArgument) {
			t.Errorf("UpdateColumns(%q): %v, want ErrInvalidArgument", cols, err)
		}
	}
}

func TestForceIncrement(t *testing.T) {
	t.Parallel()
	_, pool, accounts := setup(t, 1)
	ctx := context.Background()

	root := mustGet(t, accounts, pool, int64(1))
	other := root
	if err := accounts.ForceIncrement(ctx, pool, &root); err != nil {
		t.Fatal(err)
	}
	if root.Version != 2 {
		t.Fatalf("version after ForceIncrement = %d, want 2", root.Version)
	}
	if got := mustGet(t, accounts, pool, int64(1)); got != root {
		t.Fatalf("stored %+v, want %+v (same values, new version)", got, root)
	}
	// Whoever held the aggregate at version 1 can no longer write it.
	other.Balance = 0
	wantConflict(t, accounts.Update(ctx, pool, &other), pgcc.ConflictError{Table: `"accounts"`, Op: pgcc.OpUpdate, Key: pgcc.Key{int64(1)}, Expected: 1, Actual: 2})
	err := accounts.ForceIncrement(ctx, pool, &other)
	wantConflict(t, err, pgcc.ConflictError{Table: `"accounts"`, Op: pgcc.OpForceIncrement, Key: pgcc.Key{int64(1)}, Expected: 1, Actual: 2})
	if !strings.Contains(err.Error(), "conflict incrementing the version of \"accounts\" id=1") {
		t.Fatalf("message %q", err)
	}
}

type Membership struct {
	Tenant  string `db:"tenant"`
	UserID  int32  `db:"user_id"`
	Role    string `db:"role"`
	Version int64  `db:"version"`
}

func TestCompositeKey(t *testing.T) {
	t.Parallel()
	pool := pgtest.Pool(t)
	ctx := context.Background()
	if _, err := pool.Exec(ctx, `CREATE TABLE memberships (tenant text, user_id int, role text NOT NULL, version bigint NOT NULL,
		PRIMARY KEY (tenant, user_id))`); err != nil {
		t.Fatal(err)
	}
	members, err := repo.NewTable[Membership]("memberships", repo.WithKey("tenant", "user_id"))
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range []Membership{{"acme", 7, "admin", 0}, {"acme", 8, "viewer", 0}, {"other co", 7, "viewer", 0}} {
		if err := members.Insert(ctx, pool, &m); err != nil {
			t.Fatal(err)
		}
	}
	if got := members.KeyColumns(); len(got) != 2 || got[0] != "tenant" || got[1] != "user_id" {
		t.Fatalf("KeyColumns = %q", got)
	}
	mine := mustGet(t, members, pool, "acme", int32(7))
	theirs := mine
	theirs.Role = "owner"
	if err := members.Update(ctx, pool, &theirs); err != nil {
		t.Fatal(err)
	}
	mine.Role = "viewer"
	err = members.Update(ctx, pool, &mine)
	wantConflict(t, err, pgcc.ConflictError{Table: `"memberships"`, Op: pgcc.OpUpdate, Key: pgcc.Key{"acme", int32(7)}, Expected: 1, Actual: 2})
	if got, want := err.Error(), `pgcc: conflict updating "memberships" tenant="acme" user_id=7: expected version 1, found 2`; got != want {
		t.Fatalf("message %q, want %q", got, want)
	}
	// The other rows sharing half of the key are untouched.
	for _, k := range []pgcc.Key{{"acme", int32(8)}, {"other co", int32(7)}} {
		if got := mustGet(t, members, pool, k...); got.Version != 1 {
			t.Fatalf("row %v at version %d, want 1", k, got.Version)
		}
	}
	if _, err := members.Get(ctx, pool, pgcc.Key{"acme"}); !errors.Is(err, pgcc.ErrInvalidArgument) {
		t.Fatalf("Get with half a key: %v, want ErrInvalidArgument", err)
	}
}

// XminAccount has no version column: the table's xmin is its version.
type XminAccount struct {
	ID      int64  `db:"id"`
	Balance int64  `db:"balance"`
	Xmin    uint32 `db:"xmin"`
}

func TestXmin(t *testing.T) {
	t.Parallel()
	pool := pgtest.Pool(t)
	ctx := context.Background()
	if _, err := pool.Exec(ctx, "CREATE TABLE wallets (id bigint PRIMARY KEY, balance bigint NOT NULL)"); err != nil {
		t.Fatal(err)
	}
	wallets, err := repo.NewTable[XminAccount]("wallets", repo.WithXmin())
	if err != nil {
		t.Fatal(err)
	}
	if wallets.Kind() != repo.VersionXmin || wallets.VersionColumn() != "xmin" {
		t.Fatalf("kind %v, version column %q", wallets.Kind(), wallets.VersionColumn())
	}
	w := XminAccount{ID: 1, Balance: 10}
	if err := wallets.Insert(ctx, pool, &w); err != nil {
		t.Fatal(err)
	}
	if w.Xmin == 0 || int64(w.Xmin) != queryInt(t, pool, "SELECT xmin::text::bigint FROM wallets WHERE id = 1") {
		t.Fatalf("Insert set xmin %d, database says otherwise", w.Xmin)
	}
	stale := mustGet(t, wallets, pool, int64(1))
	if stale != w {
		t.Fatalf("Get = %+v, want %+v", stale, w)
	}
	w.Balance = 20
	if err := wallets.Update(ctx, pool, &w); err != nil {
		t.Fatal(err)
	}
	if w.Xmin == stale.Xmin || int64(w.Xmin) != queryInt(t, pool, "SELECT xmin::text::bigint FROM wallets WHERE id = 1") {
		t.Fatalf("xmin after Update = %d (was %d), database says otherwise", w.Xmin, stale.Xmin)
	}

	stale.Balance = 99
	err = wallets.Update(ctx, pool, &stale)
	wantConflict(t, err, pgcc.ConflictError{Table: `"wallets"`, Op: pgcc.OpUpdate, Key: pgcc.Key{int64(1)}, Expected: int64(stale.Xmin), Actual: int64(w.Xmin)})
	wantConflict(t, wallets.Delete(ctx, pool, &stale), pgcc.ConflictError{Table: `"wallets"`, Op: pgcc.OpDelete, Key: pgcc.Key{int64(1)}, Expected: int64(stale.Xmin), Actual: int64(w.Xmin)})

	before := w.Xmin
	if err := wallets.ForceIncrement(ctx, pool, &w); err != nil {
		t.Fatal(err)
	}
	if w.Xmin == before || mustGet(t, wallets, pool, int64(1)) != w {
		t.Fatalf("ForceIncrement: xmin %d (was %d), stored %+v", w.Xmin, before, mustGet(t, wallets, pool, int64(1)))
	}
	if err := wallets.UpdateAll(ctx, pool, []*XminAccount{&w}); err != nil {
		t.Fatal(err)
	}
	if got := mustGet(t, wallets, pool, int64(1)); got != w {
		t.Fatalf("after UpdateAll stored %+v, row says %+v", got, w)
	}

	// SelectColumns quoted and scanned by pgx.RowToStructByName, as package lock loads rows, fills the xmin
	// field too.
	cols := wallets.SelectColumns()
	for i, c := range cols {
		cols[i] = pgx.Identifier{c}.Sanitize()
	}
	rows, err := pool.Query(ctx, "SELECT "+strings.Join(cols, ", ")+" FROM "+wallets.Identifier().Sanitize()+" WHERE id = 1")
	if err != nil {
		t.Fatal(err)
	}
	loaded, err := pgx.CollectExactlyOneRow(rows, pgx.RowToStructByName[XminAccount])
	if err != nil || loaded != w {
		t.Fatalf("RowToStructByName over SelectColumns: %+v, %v; want %+v", loaded, err, w)
	}

	if err := wallets.Delete(ctx, pool, &w); err != nil {
		t.Fatal(err)
	}
}

func TestUpdateAll(t *testing.T) {
	t.Parallel()
	_, pool, accounts := setup(t, 10)
	ctx := context.Background()

	rows := make([]*Account, 10)
	for i := range rows {
		r := mustGet(t, accounts, pool, int64(i+1))
		r.Balance = int64(1000 + i)
		rows[i] = &r
	}
	// Someone else updates row 4 twice and deletes row 8.
	for range 2 {
		if _, err := pool.Exec(ctx, "UPDATE accounts SET balance = 0, version = version + 1 WHERE id = 4"); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := pool.Exec(ctx, "DELETE FROM accounts WHERE id = 8"); err != nil {
		t.Fatal(err)
	}

	err := accounts.UpdateAll(ctx, pool, rows)
	var bulk *repo.BulkConflictError
	if !errors.As(err, &bulk) || !errors.Is(err, pgcc.ErrConflict) {
		t.Fatalf("UpdateAll: %v (%T), want a *BulkConflictError", err, err)
	}
	if bulk.Rows != 10 || len(bulk.Conflicts) != 2 {
		t.Fatalf("BulkConflictError %+v, want 2 conflicts of 10 rows", bulk)
	}
	wantConflict(t, bulk.Conflicts[0], pgcc.ConflictError{Table: `"accounts"`, Op: pgcc.OpBulkUpdate, Key: pgcc.Key{int64(4)}, Expected: 1, Actual: 3})
	wantConflict(t, bulk.Conflicts[1], pgcc.ConflictError{Table: `"accounts"`, Op: pgcc.OpBulkUpdate, Key: pgcc.Key{int64(8)}, Expected: 1, Deleted: true})
	if got, want := err.Error(), `pgcc: bulk update of "accounts" rolled back: 2 of 10 rows conflicted: id=4 expected version 1, found 3; id=8 expected version 1, deleted`; got != want {
		t.Fatalf("message %q, want %q", got, want)
	}
	// All or nothing: no row was written and the caller's rows keep their versions.
	if n := queryInt(t, pool, "SELECT count(*) FROM accounts WHERE balance >= 1000 OR version <> 1 AND id <> 4"); n != 0 {
		t.Fatalf("%d rows written by a failed bulk update", n)
	}
	for _, r := range rows {
		if r.Version != 1 {
			t.Fatalf("row %d has version %d after a failed bulk update, want 1", r.ID, r.Version)
		}
	}

	// Without the stale and deleted rows the batch goes through.
	ok := append(append(append([]*Account(nil), rows[:3]...), rows[4:7]...), rows[8:]...)
	if err := accounts.UpdateAll(ctx, pool, ok); err != nil {
		t.Fatal(err)
	}
	for _, r := range ok {
		if got := mustGet(t, accounts, pool, r.ID); r.Version != 2 || got != *r {
			t.Fatalf("row %+v, stored %+v; want version 2", *r, got)
		}
	}
	if err := accounts.UpdateAll(ctx, onlyDBTX{pool}, ok); !errors.Is(err, pgcc.ErrInvalidArgument) {
		t.Fatalf("UpdateAll on a handle that cannot begin: %v, want ErrInvalidArgument", err)
	}
	if err := accounts.UpdateAll(ctx, pool, []*Account{rows[0], nil}); !errors.Is(err, pgcc.ErrInvalidArgument) {
		t.Fatalf("UpdateAll with a nil row: %v, want ErrInvalidArgument", err)
	}
	if err := accounts.UpdateAll(ctx, pool, nil); err != nil {
		t.Fatalf("UpdateAll of nothing: %v", err)
	}
}

// TestUpdateAllInTx: inside a transaction the batch runs in a savepoint, so a conflict leaves the transaction
// usable and its earlier work intact.
func TestUpdateAllInTx(t *testing.T) {
	t.Parallel()
	_, pool, accounts := setup(t, 3)
	ctx := context.Background()
	stale := mustGet(t, accounts, pool, int64(3))
	if _, err := pool.Exec(ctx, "UPDATE accounts SET version = 5 WHERE id = 3"); err != nil {
		t.Fatal(err)
	}
	err := txn.Run(ctx, pool, func(ctx context.Context, tx pgx.Tx) error {
		first := mustGet(t, accounts, tx, int64(1))
		first.Owner = "written before the batch"
		if err := accounts.Update(ctx, tx, &first); err != nil {
			return err
		}
		second := mustGet(t, accounts, tx, int64(2))
		second.Balance = 1
		err := accounts.UpdateAll(ctx, tx, []*Account{&second, &stale})
		var bulk *repo.BulkConflictError
		if !errors.As(err, &bulk) || len(bulk.Conflicts) != 1 || bulk.Conflicts[0].Actual != 5 {
			t.Errorf("UpdateAll in a transaction: %v, want one conflict at version 5", err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := mustGet(t, accounts, pool, int64(1)); got.Owner != "written before the batch" || got.Version != 2 {
		t.Fatalf("row 1 %+v: the transaction's earlier write was lost", got)
	}
	if got := mustGet(t, accounts, pool, int64(2)); got.Balance != 100 || got.Version != 1 {
		t.Fatalf("row 2 %+v: written by a rolled-back batch", got)
	}
}

// TestUpdateAllLarge: a batch of thousands of rows is one statement, still all or nothing.
func TestUpdateAllLarge(t *testing.T) {
	t.Parallel()
	const n = 2500
	_, pool, accounts := setup(t, n)
	ctx := context.Background()
	rows, err := pool.Query(ctx, "SELECT id, owner, balance, version FROM accounts ORDER BY id")
	if err != nil {
		t.Fatal(err)
	}
	all, err := pgx.CollectRows(rows, pgx.RowToAddrOfStructByName[Account])
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range all {
		r.Balance++
	}
	if _, err := pool.Exec(ctx, "UPDATE accounts SET version = 2 WHERE id = $1", n); err != nil {
		t.Fatal(err)
	}
	err = accounts.UpdateAll(ctx, pool, all)
	var bulk *repo.BulkConflictError
	if !errors.As(err, &bulk) || len(bulk.Conflicts) != 1 || !sameKey(bulk.Conflicts[0].Key, pgcc.Key{int64(n)}) {
		t.Fatalf("UpdateAll: %v, want one conflict on the last row", err)
	}
	if got := queryInt(t, pool, "SELECT count(*) FROM accounts WHERE balance <> 100"); got != 0 {
		t.Fatalf("%d rows written by a failed batch", got)
	}
	all[n-1].Version = 2
	if err := accounts.UpdateAll(ctx, pool, all); err != nil {
		t.Fatal(err)
	}
	if got := queryInt(t, pool, "SELECT count(*) FROM accounts WHERE balance = 101 AND version IN (2, 3)"); got != n {
		t.Fatalf("%d rows written, want %d", got, n)
	}
}

func TestCheck(t *testing.T) {
	t.Parallel()
	_, pool, accounts := setup(t, 2)
	ctx := context.Background()
	const cas = "UPDATE accounts SET balance = $2, version = version + 1 WHERE id = $1 AND version = $3"

	tag, err := pool.Exec(ctx, cas, 1, 500, 1)
	if err != nil {
		t.Fatal(err)
	}
	if err := accounts.Check(ctx, pool, tag, pgcc.Key{1}, 1); err != nil {
		t.Fatalf("Check after a successful write: %v", err)
	}
	tag, err = pool.Exec(ctx, cas, 1, 600, 1)
	if err != nil {
		t.Fatal(err)
	}
	err = accounts.Check(ctx, pool, tag, pgcc.Key{1}, 1)
	wantConflict(t, err, pgcc.ConflictError{Table: `"accounts"`, Op: pgcc.OpCheck, Key: pgcc.Key{1}, Expected: 1, Actual: 2})
	if got, want := err.Error(), `pgcc: conflict writing "accounts" id=1: expected version 1, found 2`; got != want {
		t.Fatalf("message %q, want %q", got, want)
	}

	tag, err = pool.Exec(ctx, "DELETE FROM accounts WHERE id = $1 AND version = $2", 3, 1)
	if err != nil {
		t.Fatal(err)
	}
	wantConflict(t, accounts.Check(ctx, pool, tag, pgcc.Key{3}, 1), pgcc.ConflictError{Table: `"accounts"`, Op: pgcc.OpCheck, Key: pgcc.Key{3}, Expected: 1, Deleted: true})
	if err := accounts.Check(ctx, pool, tag, pgcc.Key{1, 2}, 1); !errors.Is(err, pgcc.ErrInvalidArgument) {
		t.Fatalf("Check with two key values: %v, want ErrInvalidArgument", err)
	}
}

type Ticket struct {
	ID        int64     `db:"id"`
	Title     string    `db:"title"`
	CreatedAt time.Time `db:"created_at"`
	Version   int64     `db:"version"`
}

func TestInsertDefaults(t *testing.T) {
	t.Parallel()
	pool := pgtest.Pool(t)
	ctx := context.Background()
	if _, err := pool.Exec(ctx, `CREATE TABLE tickets (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
		title text NOT NULL UNIQUE, created_at timestamptz NOT NULL DEFAULT now(), version int NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	tickets, err := repo.NewTable[Ticket]("tickets", repo.WithInsertDefaults("id", "created_at"))
	if err != nil {
		t.Fatal(err)
	}
	a, b := Ticket{Title: "first"}, Ticket{Title: "second"}
	for _, tk := range []*Ticket{&a, &b} {
		if err := tickets.Insert(ctx, pool, tk); err != nil {
			t.Fatal(err)
		}
	}
	if a.ID != 1 || b.ID != 2 || a.CreatedAt.IsZero() || a.Version != 1 {
		t.Fatalf("inserted %+v and %+v: ids, created_at and version not read back", a, b)
	}
	if got := mustGet(t, tickets, pool, a.ID); !got.CreatedAt.Equal(a.CreatedAt) || got.Title != "first" {
		t.Fatalf("Get = %+v, want %+v", got, a)
	}
	dup := Ticket{Title: "first"}
	err = tickets.Insert(ctx, pool, &dup)
	if pgCode(err) != pgerrcode.UniqueViolation || dup.ID != 0 || dup.Version != 0 {
		t.Fatalf("duplicate Insert: %v, row %+v; want SQLSTATE 23505 and the row untouched", err, dup)
	}
}

type embeddedVersion struct {
	Version int64 `db:"version"`
}

// Note has an embedded struct, an untagged field, a skipped field and an unexported one.
type Note struct {
	ID   int64 `db:"id"`
	Body string
	Memo string `db:"-"`
	note string
	embeddedVersion
}

func TestStructMapping(t *testing.T) {
	t.Parallel()
	pool := pgtest.Pool(t)
	ctx := context.Background()
	if _, err := pool.Exec(ctx, "CREATE TABLE notes (id bigint PRIMARY KEY, body text NOT NULL, version bigint NOT NULL)"); err != nil {
		t.Fatal(err)
	}
	notes, err := repo.NewTable[Note]("notes")
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(notes.SelectColumns(), ","); got != "id,body,version" {
		t.Fatalf("SelectColumns = %s, want id,body,version", got)
	}
	n := Note{ID: 1, Body: "hello", Memo: "not stored", note: "not stored"}
	if err := notes.Insert(ctx, pool, &n); err != nil {
		t.Fatal(err)
	}
	n.Body = "hello again"
	if err := notes.Update(ctx, pool, &n); err != nil {
		t.Fatal(err)
	}
	if got := mustGet(t, notes, pool, int64(1)); got.Body != "hello again" || got.Version != 2 || got.Memo != "" || got.note != "" {
		t.Fatalf("Get = %+v", got)
	}
}

type noVersion struct {
	ID int64 `db:"id"`
}

type textVersion struct {
	ID      int64  `db:"id"`
	Version string `db:"version"`
}

type twice struct {
	ID    int64 `db:"id"`
	Other int64 `db:"id"`
	V     int64 `db:"version"`
}

type hostile struct {
	Key     string `db:"\"; DROP TABLE x; --"`
	Version int64  `db:"version"`
}

type nulColumn struct {
	ID      int64 `db:"id\x00"`
	Version int64 `db:"version"`
}

func TestNewTableErrors(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("n", 64)
	for _, tc := range []struct {
		name    string
		newFn   func() error
		want    error
		message string
	}{
		{"empty table name", func() error { _, err := repo.NewTable[Account](""); return err }, pgcc.ErrInvalidArgument, "empty table name"},
		{"NUL in table name", func() error { _, err := repo.NewTable[Account]("acc\x00ounts"); return err }, pgcc.ErrInvalidArgument, "NUL byte"},
		{"64-byte table name", func() error { _, err := repo.NewTable[Account](long); return err }, pgcc.ErrInvalidArgument, "64 bytes long"},
		{"invalid UTF-8", func() error { _, err := repo.NewTable[Account]("\xff"); return err }, pgcc.ErrInvalidArgument, "UTF-8"},
		{"64-byte schema", func() error { _, err := repo.NewTable[Account]("a", repo.InSchema(long)); return err }, pgcc.ErrInvalidArgument, "schema name"},
		{"NUL in a column tag", func() error { _, err := repo.NewTable[nulColumn]("a"); return err }, pgcc.ErrInvalidArgument, "NUL byte"},
		{"missing key field", func() error { _, err := repo.NewTable[Account]("a", repo.WithKey("uuid")); return err }, pgcc.ErrInvalidArgument, `no field for key column "uuid"`},
		{"missing version field", func() error { _, err := repo.NewTable[noVersion]("a"); return err }, pgcc.ErrInvalidArgument, `no field for counter version column "version"`},
		{"missing xmin field", func() error { _, err := repo.NewTable[Account]("a", repo.WithXmin()); return err }, pgcc.ErrInvalidArgument, `no field for xmin version column "xmin"`},
		{"xmin in an int64", func() error { _, err := repo.NewTable[XminWide]("a", repo.WithXmin()); return err }, pgcc.ErrInvalidArgument, "must be uint32"},
		{"text version", func() error { _, err := repo.NewTable[textVersion]("a"); return err }, pgcc.ErrInvalidArgument, "must be an integer"},
		{"version is key", func() error { _, err := repo.NewTable[Account]("a", repo.WithKey("version")); return err }, pgcc.ErrInvalidArgument, "also a key column"},
		{"column mapped twice", func() error { _, err := repo.NewTable[twice]("a"); return err }, pgcc.ErrInvalidArgument, `column "id" is mapped by two fields`},
		{"not a struct", func() error { _, err := repo.NewTable[int]("a"); return err }, pgcc.ErrInvalidArgument, "must be a struct"},
		{"pointer type", func() error { _, err := repo.NewTable[*Account]("a"); return err }, pgcc.ErrInvalidArgument, "must be a struct"},
		{"no key columns", func() error { _, err := repo.NewTable[Account]("a", repo.WithKey()); return err }, pgcc.ErrInvalidArgument, "at least one column"},
		{"key given twice", func() error { _, err := repo.NewTable[Account]("a", repo.WithKey("id", "id")); return err }, pgcc.ErrInvalidArgument, "given twice"},
		{"nil option", func() error { _, err := repo.NewTable[Account]("a", nil); return err }, pgcc.ErrInvalidArgument, "nil option"},
		{"unknown insert default", func() error { _, err := repo.NewTable[Account]("a", repo.WithInsertDefaults("created")); return err }, pgcc.ErrInvalidArgument, `column "created"`},
		{"version as insert default", func() error { _, err := repo.NewTable[Account]("a", repo.WithInsertDefaults("version")); return err }, pgcc.ErrInvalidArgument, "set by Insert"},
		{"hostile names are fine", func() error {
			_, err := repo.NewTable[hostile]("select", repo.WithKey("\"; DROP TABLE x; --"))
			return err
		}, nil, ""},
		{"63-byte names are fine", func() error { _, err := repo.NewTable[Account](long[:63], repo.InSchema(long[:63])); return err }, nil, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			err := tc.newFn()
			if !errors.Is(err, tc.want) || (err != nil) != (tc.want != nil) || !strings.Contains(errString(err), tc.message) {
				t.Fatalf("NewTable: %v, want %v containing %q", err, tc.want, tc.message)
			}
		})
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

type strangeRow struct {
	Key     string `db:"\"; DROP TABLE x; --"`
	Select  int64  `db:"select"`
	Spaced  string `db:"with space"`
	Quoted  string `db:"quo\"te"`
	Mixed   string `db:"Mixed Case"`
	Dollar  string `db:"$1"`
	Version int64  `db:"order"`
}

// TestHostileNames creates a schema, table and columns with names that would break SQL if spliced unquoted,
// and runs every operation on them. The table x that the names try to drop survives.
func TestHostileNames(t *testing.T) {
	t.Parallel()
	pool := pgtest.Pool(t)
	ctx := context.Background()
	schema, table := `my "schema"; --`, `"; DROP TABLE x; --`
	ddl := `CREATE TABLE x (n int);
		CREATE SCHEMA ` + pgx.Identifier{schema}.Sanitize() + `;
		CREATE TABLE ` + pgx.Identifier{schema, table}.Sanitize() + ` (
			"""; DROP TABLE x; --" text PRIMARY KEY, "select" bigint, "with space" text, "quo""te" text,
			"Mixed Case" text, "$1" text, "order" bigint NOT NULL)`
	if _, err := pool.Exec(ctx, ddl); err != nil {
		t.Fatal(err)
	}
	strange, err := repo.NewTable[strangeRow](table, repo.InSchema(schema), repo.WithKey(`"; DROP TABLE x; --`), repo.WithVersion("order"))
	if err != nil {
		t.Fatal(err)
	}
	rows := []strangeRow{
		{Key: "a'; DROP TABLE x; --", Select: 1, Spaced: "s p", Quoted: `"`, Mixed: "M", Dollar: "$2"},
		{Key: `b"`, Select: 2},
	}
	for i := range rows {
		if err := strange.Insert(ctx, pool, &rows[i]); err != nil {
			t.Fatal(err)
		}
	}
	got := mustGet(t, strange, pool, rows[0].Key)
	if got != rows[0] {
		t.Fatalf("Get = %+v, want %+v", got, rows[0])
	}
	got.Select = 10
	if err := strange.Update(ctx, pool, &got); err != nil {
		t.Fatal(err)
	}
	got.Mixed = "m"
	if err := strange.UpdateColumns(ctx, pool, &got, "Mixed Case", "with space"); err != nil {
		t.Fatal(err)
	}
	err = strange.Update(ctx, pool, &rows[0])
	wantConflict(t, err, pgcc.ConflictError{Table: pgx.Identifier{schema, table}.Sanitize(), Op: pgcc.OpUpdate, Key: pgcc.Key{rows[0].Key}, Expected: 1, Actual: 3})
	if err := strange.ForceIncrement(ctx, pool, &got); err != nil {
		t.Fatal(err)
	}
	second := mustGet(t, strange, pool, rows[1].Key)
	second.Quoted = "q"
	if err := strange.UpdateAll(ctx, pool, []*strangeRow{&got, &second}); err != nil {
		t.Fatal(err)
	}
	err = strange.UpdateAll(ctx, pool, []*strangeRow{&rows[0], &second})
	var bulk *repo.BulkConflictError
	if !errors.As(err, &bulk) || len(bulk.Conflicts) != 1 || bulk.Conflicts[0].Actual != 4 {
		t.Fatalf("UpdateAll with a stale row: %v", err)
	}
	tag, err := pool.Exec(ctx, "UPDATE "+strange.Identifier().Sanitize()+` SET "order" = "order" + 1 WHERE """; DROP TABLE x; --" = $1 AND "order" = $2`, second.Key, 1)
	if err != nil {
		t.Fatal(err)
	}
	wantConflict(t, strange.Check(ctx, pool, tag, pgcc.Key{second.Key}, 1), pgcc.ConflictError{Table: strange.Name(), Op: pgcc.OpCheck, Key: pgcc.Key{second.Key}, Expected: 1, Actual: 2})
	if err := strange.Delete(ctx, pool, &got); err != nil {
		t.Fatal(err)
	}
	if n := queryInt(t, pool, "SELECT count(*) FROM "+strange.Identifier().Sanitize()); n != 1 {
		t.Fatalf("%d rows left, want 1", n)
	}
	if n := queryInt(t, pool, "SELECT count(*) FROM pg_tables WHERE tablename = 'x'"); n != 1 {
		t.Fatal("table x is gone")
	}
}

// XminWide keeps xmin in an int64 field, which pgx cannot scan the xid column into.
type XminWide struct {
	ID   int64 `db:"id"`
	Xmin int64 `db:"xmin"`
}
