package inspect_test

import (
	"bytes"
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgcc/pgcc/internal/inspect"
	"github.com/pgcc/pgcc/internal/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

func find(nodes []*inspect.Node, pid int32) *inspect.Node {
	for _, n := range nodes {
		if n.Session.PID == pid {
			return n
		}
		if f := find(n.Children, pid); f != nil {
			return f
		}
	}
	return nil
}

// TestBlockingTree holds a row lock on one connection, makes two others wait for it (the second behind the
// first), and checks that the snapshot roots the holder and hangs both waiters under it.
func TestBlockingTree(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db := pgtest.NewDB(t)
	pool := db.Pool(t)
	if _, err := pool.Exec(ctx, `CREATE TABLE items (id int PRIMARY KEY, n int); INSERT INTO items VALUES (1, 0)`); err != nil {
		t.Fatal(err)
	}
	holder, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Rollback(ctx)
	if _, err := holder.Exec(ctx, `UPDATE items SET n = n + 1 WHERE id = 1`); err != nil {
		t.Fatal(err)
	}
	holderPID := int32(holder.Conn().PgConn().PID())

	waiterPIDs := make(chan int32, 2)
	done := make(chan error, 2)
	for range 2 {
		go func() {
			done <- pgxRun(ctx, pool, func(tx pgx.Tx) error {
				waiterPIDs <- int32(tx.Conn().PgConn().PID())
				_, err := tx.Exec(ctx, `UPDATE items SET n = n + 1 WHERE id = 1`)
				return err
			})
		}()
	}
	w1, w2 := <-waiterPIDs, <-waiterPIDs

	var snap *inspect.Snapshot
	deadline := time.Now().Add(10 * time.Second)
	for {
		snap, err = inspect.Take(ctx, pool, false)
		if err != nil {
			t.Fatal(err)
		}
		root := find(snap.Tree(), holderPID)
		if root != nil && find(root.Children, w1) != nil && find(root.Children, w2) != nil {
			break
		}
		if time.Now().After(deadline) {
			var buf bytes.Buffer
			_ = snap.Render(&buf, 80)
			t.Fatalf("waiters %d, %d not under holder %d:\n%s", w1, w2, holderPID, buf.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	tree := snap.Tree()
	root := find(tree, holderPID)
	if len(root.Session.BlockedBy) != 0 || root.Session.State != "idle in transaction" {
		t.Errorf("holder = %+v, want idle in transaction and blocked by nobody", root.Session)
	}
	for _, pid := range []int32{w1, w2} {
		n := find(tree, pid)
		if n.Session.WaitingFor == "" || !strings.HasPrefix(n.Session.WaitEvent, "Lock:") || n.Session.Application != "pgcc-test" {
			t.Errorf("waiter %d = %+v, want a lock wait from pgcc-test", pid, n.Session)
		}
	}
	var buf bytes.Buffer
	if err := snap.Render(&buf, 60); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	for _, want := range []string{"waiting for a lock", "pid " + itoa(holderPID), "└─ ", "waiting ", "UPDATE items SET"} {
		if !strings.Contains(out, want) {
			t.Errorf("rendered tree lacks %q:\n%s", want, out)
		}
	}

	if err := holder.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	var n int
	if err := pool.QueryRow(ctx, `SELECT n FROM items WHERE id = 1`).Scan(&n); err != nil || n != 2 {
		t.Fatalf("n = %d, %v; want 2", n, err)
	}
}

// TestTreeCycleAndRepeats checks the tree on hand-made snapshots: a waiter blocked by two sessions appears
// under both, marked repeated once, and a cycle is still shown.
func TestTreeCycleAndRepeats(t *testing.T) {
	t.Parallel()
	snap := &inspect.Snapshot{Sessions: []inspect.Session{
		{PID: 1},
		{PID: 2},
		{PID: 3, BlockedBy: []int32{1, 2}},
		{PID: 4, BlockedBy: []int32{5}},
		{PID: 5, BlockedBy: []int32{4}},
	}}
	tree := snap.Tree()
	if len(tree) != 3 {
		t.Fatalf("roots = %d, want 3 (1, 2, and the 4-5 cycle)", len(tree))
	}
	if tree[0].Session.PID != 1 || tree[0].Children[0].Session.PID != 3 || tree[0].Children[0].Repeated {
		t.Errorf("first root = %+v", tree[0])
	}
	if tree[1].Session.PID != 2 || !tree[1].Children[0].Repeated {
		t.Errorf("second root = %+v, want 3 repeated under 2", tree[1])
	}
	if tree[2].Session.PID != 4 || tree[2].Children[0].Session.PID != 5 || !tree[2].Children[0].Children[0].Repeated {
		t.Errorf("cycle root = %+v", tree[2])
	}
	var buf bytes.Buffer
	if err := snap.Render(&buf, 0); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(buf.String(), "3 session(s) waiting") || !strings.Contains(buf.String(), "(shown above)") {
		t.Errorf("render:\n%s", buf.String())
	}
}

func pgxRun(ctx context.Context, db interface {
	Begin(context.Context) (pgx.Tx, error)
}, fn func(pgx.Tx) error) error {
	tx, err := db.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(ctx)
	if err := fn(tx); err != nil {
		return err
	}
	return tx.Commit(ctx)
}

func itoa(n int32) string { return strconv.Itoa(int(n)) }
