package repo_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgcc/pgcc"
	"github.com/pgcc/pgcc/internal/pgtest"
	"github.com/pgcc/pgcc/repo"
	"github.com/pgcc/pgcc/txn"
)

// Doc has the column types that lack an equality operator (json) or whose equality is looser than identity
// (numeric 1.0 = 1.00), to show that "no value changed" means "no stored byte changed".
type Doc struct {
	ID      int64    `db:"id"`
	Body    []byte   `db:"body"`
	Amount  string   `db:"amount"`
	Tags    []string `db:"tags"`
	Version int64    `db:"version"`
}

// TestNoOpUpdateKeepsVersion: an Update that writes the values already stored leaves the version alone, so
// that others holding the row do not conflict; any change of a stored value, however small, changes it.
func TestNoOpUpdateKeepsVersion(t *testing.T) {
	t.Parallel()
	_, pool, accounts := setup(t, 1)
	ctx := context.Background()

	a := mustGet(t, accounts, pool, int64(1))
	other := a
	if err := accounts.Update(ctx, pool, &a); err != nil || a.Version != 1 {
		t.Fatalf("no-op Update: %v, version %d; want version 1 kept", err, a.Version)
	}
	if err := accounts.UpdateColumns(ctx, pool, &a, "balance"); err != nil || a.Version != 1 {
		t.Fatalf("no-op UpdateColumns: %v, version %d", err, a.Version)
	}
	if err := accounts.UpdateAll(ctx, pool, []*Account{&a}); err != nil || a.Version != 1 {
		t.Fatalf("no-op UpdateAll: %v, version %d", err, a.Version)
	}
	other.Balance = 50 // the holder of the same version can still write
	if err := accounts.Update(ctx, pool, &other); err != nil || other.Version != 2 {
		t.Fatalf("write after no-op saves: %v, version %d", err, other.Version)
	}
	// A no-op save at a stale version is still a conflict: the version is checked before anything else.
	wantConflict(t, accounts.Update(ctx, pool, &a), pgcc.ConflictError{Table: `"accounts"`, Op: pgcc.OpUpdate, Key: pgcc.Key{int64(1)}, Expected: 1, Actual: 2})
	if err := accounts.ForceIncrement(ctx, pool, &other); err != nil || other.Version != 3 {
		t.Fatalf("ForceIncrement always bumps: %v, version %d", err, other.Version)
	}

	pool2 := pgtest.Pool(t)
	if _, err := pool2.Exec(ctx, `CREATE TABLE docs (id bigint PRIMARY KEY, body json, amount numeric, tags text[], version bigint NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	docs, err := repo.NewTable[Doc]("docs")
	if err != nil {
		t.Fatal(err)
	}
	d := Doc{ID: 1, Body: []byte(`{"a":1}`), Amount: "1.0", Tags: []string{"x"}}
	if err := docs.Insert(ctx, pool2, &d); err != nil {
		t.Fatal(err)
	}
	d = mustGet(t, docs, pool2, int64(1))
	for _, tc := range []struct {
		name    string
		change  func(*Doc)
		version int64
	}{
		{"same values", func(*Doc) {}, 1},
		{"json whitespace", func(d *Doc) { d.Body = []byte(`{"a": 1}`) }, 2},
		{"same json", func(*Doc) {}, 2},
		{"numeric scale", func(d *Doc) { d.Amount = "1.00" }, 3},
		{"array element", func(d *Doc) { d.Tags = []string{"x", "y"} }, 4},
		{"NULL", func(d *Doc) { d.Tags = nil }, 5},
		{"NULL again", func(*Doc) {}, 5},
	} {
		tc.change(&d)
		if err := docs.Update(ctx, pool2, &d); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if got := mustGet(t, docs, pool2, int64(1)); d.Version != tc.version || got.Version != tc.version {
			t.Fatalf("%s: version %d (stored %d), want %d", tc.name, d.Version, got.Version, tc.version)
		}
	}
	d.Amount = "2"
	if err := docs.UpdateAll(ctx, pool2, []*Doc{&d}); err != nil || d.Version != 6 {
		t.Fatalf("UpdateAll of a json/numeric/array row: %v, version %d", err, d.Version)
	}
}

// TestWriteOptions: SkipVersionCheck and KeepVersion do what their names say, and nothing else.
func TestWriteOptions(t *testing.T) {
	t.Parallel()
	_, pool, accounts := setup(t, 3)
	ctx := context.Background()

	stale := mustGet(t, accounts, pool, int64(1))
	if _, err := pool.Exec(ctx, "UPDATE accounts SET version = 5 WHERE id = 1"); err != nil {
		t.Fatal(err)
	}
	stale.Owner = "last writer"
	if err := accounts.Update(ctx, pool, &stale, repo.SkipVersionCheck()); err != nil || stale.Version != 6 {
		t.Fatalf("SkipVersionCheck: %v, version %d; want the row written at version 6", err, stale.Version)
	}
	if got := mustGet(t, accounts, pool, int64(1)); got.Owner != "last writer" || got.Version != 6 {
		t.Fatalf("stored %+v", got)
	}

	kept := mustGet(t, accounts, pool, int64(2))
	holder := kept
	kept.Balance = 1
	if err := accounts.Update(ctx, pool, &kept, repo.KeepVersion()); err != nil || kept.Version != 1 {
		t.Fatalf("KeepVersion: %v, version %d; want 1", err, kept.Version)
	}
	if got := mustGet(t, accounts, pool, int64(2)); got.Balance != 1 || got.Version != 1 {
		t.Fatalf("stored %+v, want balance 1 at version 1", got)
	}
	holder.Owner = "holder" // nobody's version changed: the holder writes over the kept change, as asked
	if err := accounts.Update(ctx, pool, &holder); err != nil || holder.Version != 2 {
		t.Fatalf("write after KeepVersion: %v", err)
	}
	kept.Balance = 2 // KeepVersion still checks the version
	wantConflict(t, accounts.Update(ctx, pool, &kept, repo.KeepVersion()), pgcc.ConflictError{Table: `"accounts"`, Op: pgcc.OpUpdate, Key: pgcc.Key{int64(2)}, Expected: 1, Actual: 2})
	if err := accounts.Update(ctx, pool, &kept, repo.KeepVersion(), repo.SkipVersionCheck()); err != nil || kept.Version != 1 {
		t.Fatalf("KeepVersion and SkipVersionCheck: %v, version %d", err, kept.Version)
	}
	if got := mustGet(t, accounts, pool, int64(2)); got.Balance != 2 || got.Version != 2 {
		t.Fatalf("stored %+v, want balance 2 at version 2", got)
	}

	gone := Account{ID: 404, Owner: "nobody"}
	for name, err := range map[string]error{
		"Update":        accounts.Update(ctx, pool, &gone, repo.SkipVersionCheck()),
		"Update, kept":  accounts.Update(ctx, pool, &gone, repo.SkipVersionCheck(), repo.KeepVersion()),
		"Delete by key": accounts.Delete(ctx, pool, &gone, repo.SkipVersionCheck()),
	} {
		var nf *pgcc.NotFoundError
		if !errors.As(err, &nf) || errors.Is(err, pgcc.ErrConflict) {
			t.Errorf("%s of a missing row without a check: %v, want *NotFoundError", name, err)
		}
	}
	third := mustGet(t, accounts, pool, int64(3))
	third.Version = 9
	if err := accounts.Delete(ctx, pool, &third, repo.SkipVersionCheck()); err != nil {
		t.Fatalf("Delete by key: %v", err)
	}
	if n := queryInt(t, pool, "SELECT count(*) FROM accounts WHERE id = 3"); n != 0 {
		t.Fatal("Delete by key left the row")
	}

	for name, err := range map[string]error{
		"Delete, KeepVersion": accounts.Delete(ctx, pool, &holder, repo.KeepVersion()),
		"nil option":          accounts.Update(ctx, pool, &holder, nil),
		"nil Delete option":   accounts.Delete(ctx, pool, &holder, nil),
	} {
		if !errors.Is(err, pgcc.ErrInvalidArgument) {
			t.Errorf("%s: %v, want ErrInvalidArgument", name, err)
		}
	}
	wallets, err := repo.NewTable[XminAccount]("wallets", repo.WithXmin())
	if err != nil {
		t.Fatal(err)
	}
	if err := wallets.Update(ctx, pool, &XminAccount{ID: 1}, repo.KeepVersion()); !errors.Is(err, pgcc.ErrInvalidArgument) || !strings.Contains(err.Error(), "xmin") {
		t.Fatalf("KeepVersion on an xmin table: %v", err)
	}
	if got := mustGet(t, accounts, pool, int64(2)); got.Version != 2 || got.Balance != 2 {
		t.Fatalf("a refused write changed row 2: %+v", got)
	}
}

// errRetryMe is a serialization failure, which txn.Run retries.
var errRetryMe = &pgconn.PgError{Code: pgerrcode.SerializationFailure, Message: "injected by the test"}

// TestRollbackRestoresVersion: a write inside txn.Run whose transaction, savepoint or attempt rolls back leaves
// the struct at the version the database still has, so the next write does not conflict with a version that
// was never committed, and a retried attempt does not conflict with itself.
func TestRollbackRestoresVersion(t *testing.T) {
	t.Parallel()
	_, pool, accounts := setup(t, 4)
	ctx := context.Background()
	errAbort := errors.New("abort")

	a := mustGet(t, accounts, pool, int64(1))
	err := txn.Run(ctx, pool, func(ctx context.Context, tx pgx.Tx) error {
		a.Balance = 1
		if err := accounts.Update(ctx, tx, &a); err != nil {
			return err
		}
		if a.Version != 2 {
			t.Errorf("version inside the transaction %d, want 2", a.Version)
		}
		return errAbort
	})
	if err != errAbort || a.Version != 1 {
		t.Fatalf("after a rollback: %v, version %d; want 1, the committed one", err, a.Version)
	}
	if err := accounts.Update(ctx, pool, &a); err != nil || a.Version != 2 {
		t.Fatalf("next write after the rollback: %v", err)
	}

	// A savepoint (nested Run) rolls back; the outer transaction commits its own write.
	b, c := mustGet(t, accounts, pool, int64(2)), mustGet(t, accounts, pool, int64(3))
	err = txn.Run(ctx, pool, func(ctx context.Context, tx pgx.Tx) error {
		b.Balance = 2
		if err := accounts.Update(ctx, tx, &b); err != nil {
			return err
		}
		inner := txn.Run(ctx, tx, func(ctx context.Context, sp pgx.Tx) error {
			c.Balance = 3
			if err := accounts.ForceIncrement(ctx, sp, &c); err != nil {
				return err
			}
			if err := accounts.Update(ctx, sp, &c); err != nil {
				return err
			}
			return errAbort
		})
		if inner != errAbort || c.Version != 1 {
			t.Errorf("after the savepoint's rollback: %v, version %d; want 1", inner, c.Version)
		}
		return nil
	})
	if err != nil || b.Version != 2 {
		t.Fatalf("outer transaction: %v, version %d; want 2", err, b.Version)
	}
	if got := mustGet(t, accounts, pool, int64(3)); got.Version != 1 || got.Balance != 100 {
		t.Fatalf("row 3 %+v: the savepoint's writes were not rolled back", got)
	}
	if err := accounts.Update(ctx, pool, &c); err != nil {
		t.Fatalf("write after the savepoint's rollback: %v", err)
	}

	// txn.Run retries: the first attempt wrote, then failed retryably. Without the restore the second attempt
	// would send version 2 and conflict with itself ("expected version 2, found 1").
	d := mustGet(t, accounts, pool, int64(4))
	inserted := Account{ID: 5, Owner: "new"}
	batch := mustGet(t, accounts, pool, int64(1))
	attempts := 0
	err = txn.Run(ctx, pool, func(ctx context.Context, tx pgx.Tx) error {
		attempts++
		d.Balance = 40
		if err := accounts.Update(ctx, tx, &d); err != nil {
			return err
		}
		if err := accounts.Insert(ctx, tx, &inserted); err != nil {
			return err
		}
		batch.Owner = "batch"
		if err := accounts.UpdateAll(ctx, tx, []*Account{&batch}); err != nil {
			return err
		}
		if attempts == 1 {
			return errRetryMe
		}
		return nil
	})
	if err != nil || attempts != 2 {
		t.Fatalf("retried transaction: %v after %d attempts", err, attempts)
	}
	if d.Version != 2 || inserted.Version != 1 || batch.Version != 3 {
		t.Fatalf("versions after the retry: %d, %d, %d; want 2, 1, 3", d.Version, inserted.Version, batch.Version)
	}
	if got := mustGet(t, accounts, pool, int64(4)); got.Balance != 40 || got.Version != 2 {
		t.Fatalf("row 4 stored %+v", got)
	}

	// A pgx.Tx that txn.Run did not give has no hooks: the version cannot be put back (documented: re-read).
	e := mustGet(t, accounts, pool, int64(2))
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	e.Balance = 5
	if err := accounts.Update(ctx, tx, &e); err != nil {
		t.Fatal(err)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if e.Version != 3 {
		t.Fatalf("plain pgx.Tx: version %d after rollback; the documented behaviour is that it stays at 3", e.Version)
	}
}

// TrackedAccount is Account with repo.Tracked: the table remembers the key each row was read with.
type TrackedAccount struct {
	repo.Tracked
	ID      int64  `db:"id"`
	Owner   string `db:"owner"`
	Balance int64  `db:"balance"`
	Version int64  `db:"version"`
}

// TestChangedKey: editing the key field of a row retargets a write to another row, which it overwrites when
// the versions happen to match. With repo.Tracked the write is refused before anything is sent.
func TestChangedKey(t *testing.T) {
	t.Parallel()
	_, pool, accounts := setup(t, 2)
	ctx := context.Background()

	// Without Tracked, the key fields are the row's identity: the write lands on row 2 (both at version 1).
	plain := mustGet(t, accounts, pool, int64(1))
	plain.ID = 2
	plain.Owner = "meant for row 1"
	if err := accounts.Update(ctx, pool, &plain); err != nil {
		t.Fatal(err)
	}
	if got := mustGet(t, accounts, pool, int64(2)); got.Owner != "meant for row 1" {
		t.Fatalf("row 2 %+v: the documented hazard did not happen", got)
	}

	tracked, err := repo.NewTable[TrackedAccount]("accounts")
	if err != nil {
		t.Fatal(err)
	}
	if got := tracked.SelectColumns(); strings.Join(got, ",") != "id,owner,balance,version" {
		t.Fatalf("Tracked maps columns: %v", got)
	}
	r := mustGet(t, tracked, pool, int64(1))
	r.ID = 2
	r.Owner = "moved?"
	for name, err := range map[string]error{
		"Update":         tracked.Update(ctx, pool, &r),
		"UpdateColumns":  tracked.UpdateColumns(ctx, pool, &r, "owner"),
		"Delete":         tracked.Delete(ctx, pool, &r),
		"ForceIncrement": tracked.ForceIncrement(ctx, pool, &r),
		"UpdateAll":      tracked.UpdateAll(ctx, pool, []*TrackedAccount{&r}),
		"Upsert":         func() error { _, err := tracked.Upsert(ctx, pool, &r); return err }(),
	} {
		if !errors.Is(err, pgcc.ErrInvalidArgument) || !strings.Contains(err.Error(), "key changed from id=1 to id=2") {
			t.Errorf("%s of a row whose key changed: %v", name, err)
		}
	}
	if got := mustGet(t, accounts, pool, int64(2)); got.Owner != "meant for row 1" || got.Version != 2 {
		t.Fatalf("row 2 written by a refused write: %+v", got)
	}
	r.ID = 1 // back to the key it was read with: fine
	if err := tracked.Update(ctx, pool, &r); err != nil {
		t.Fatal(err)
	}
	_, err = tracked.Modify(ctx, pool, pgcc.Key{int64(1)}, func(_ context.Context, a *TrackedAccount) error {
		a.ID = 2
		return nil
	})
	if !errors.Is(err, pgcc.ErrInvalidArgument) {
		t.Fatalf("Modify whose function changed the key: %v", err)
	}
	// A row that was not read through the table has nothing recorded and is written by its key fields.
	fresh := TrackedAccount{ID: 3, Owner: "new"}
	if err := tracked.Insert(ctx, pool, &fresh); err != nil {
		t.Fatal(err)
	}
	fresh.ID = 4
	if err := tracked.Update(ctx, pool, &fresh); !errors.Is(err, pgcc.ErrInvalidArgument) {
		t.Fatalf("Update after Insert with a changed key: %v", err)
	}
	unread := TrackedAccount{ID: 1, Owner: "unread", Version: r.Version}
	if err := tracked.Update(ctx, pool, &unread); err != nil {
		t.Fatalf("Update of a row not read through the table: %v", err)
	}
}

// Memo is a counter-versioned row with fields Modify compares itself (n, title) and fields it leaves to the
// server (at, a time; tags, a slice).
type Memo struct {
	ID      int64     `db:"id"`
	N       int64     `db:"n"`
	Title   string    `db:"title"`
	Doc     string    `db:"doc"`
	At      time.Time `db:"at"`
	Tags    []string  `db:"tags"`
	Version int64     `db:"version"`
}

// TestModifyVersionFollowsTheChange: Modify advances the version by exactly one when fn changed a value,
// whether the client saw the change (a number, a string: the plain compare-and-swap) or only the server can
// judge it (a time, a slice), and keeps it when nothing changed; the version returned is the one stored. A
// string the column stores alike (jsonb reformatted) advances it too, as Modify's doc says.
func TestModifyVersionFollowsTheChange(t *testing.T) {
	t.Parallel()
	pool := pgtest.Pool(t)
	ctx := context.Background()
	if _, err := pool.Exec(ctx, `CREATE TABLE memos (id bigint PRIMARY KEY, n bigint NOT NULL, title text NOT NULL,
		doc jsonb NOT NULL, at timestamptz NOT NULL, tags text[] NOT NULL, version bigint NOT NULL);
		INSERT INTO memos VALUES (1, 0, 'a', '{"a": 1}', '2026-01-01 00:00:00+00', '{x}', 1)`); err != nil {
		t.Fatal(err)
	}
	memos, err := repo.NewTable[Memo]("memos")
	if err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		name string
		fn   func(*Memo)
		want int64
	}{
		{"a number", func(n *Memo) { n.N++ }, 2},
		{"nothing", func(*Memo) {}, 2},
		{"a string", func(n *Memo) { n.Title = "b" }, 3},
		{"a string and a number back and forth", func(n *Memo) { n.Title = "b"; n.N += 0 }, 3},
		{"a time, to another instant", func(n *Memo) { n.At = n.At.Add(time.Hour) }, 4},
		{"a time, to the same instant elsewhere", func(n *Memo) { n.At = n.At.In(time.FixedZone("X", 3600)) }, 4},
		{"a slice", func(n *Memo) { n.Tags = append(n.Tags, "y") }, 5},
		{"a slice, to equal contents", func(n *Memo) { n.Tags = slices.Clone(n.Tags) }, 5},
		{"a JSON text reformatted", func(n *Memo) { n.Doc = `{"a":1}` }, 6},
	}
	for _, s := range steps {
		got, err := memos.Modify(ctx, pool, pgcc.Key{int64(1)}, func(_ context.Context, n *Memo) error { s.fn(n); return nil })
		if err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		stored := mustGet(t, memos, pool, int64(1))
		if got.Version != s.want || stored.Version != s.want {
			t.Fatalf("%s: Modify returned version %d, %d stored; want %d", s.name, got.Version, stored.Version, s.want)
		}
	}

	// A conflict on the client-judged path: another writer advances the row while fn runs; Modify reads again
	// and applies fn once on the new row.
	calls := 0
	got, err := memos.Modify(ctx, pool, pgcc.Key{int64(1)}, func(ctx context.Context, n *Memo) error {
		calls++
		if calls == 1 {
			if _, err := pool.Exec(ctx, "UPDATE memos SET n = n + 10, version = version + 1 WHERE id = 1"); err != nil {
				return err
			}
		}
		n.N++
		return nil
	})
	if err != nil || calls != 2 || got.N != 12 || got.Version != 8 {
		t.Fatalf("Modify over a concurrent write: %+v, %v after %d calls; want n 12 at version 8 after 2", got, err, calls)
	}
	if stored := mustGet(t, memos, pool, int64(1)); stored.N != 12 || stored.Version != 8 {
		t.Fatalf("stored %+v, want n 12 at version 8", stored)
	}
}
